"""The pod side of a kubelet: one watch, one worker per pod, env resolution, status bookkeeping."""

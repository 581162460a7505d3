"""Every hook has a test. HOOK_TESTS lists, for each hook of vkpy/hookspecs.py, the tests that
exercise it: a new hook fails here until a test for it is written and listed, a renamed or
removed test fails here until the list follows."""

from __future__ import annotations

import re

import pytest
from meta_support import function_source, hook_signatures

HOOK_TESTS: dict[str, tuple[str, ...]] = {
    "register_transports": (
        "tests/local/test_local_pods.py::test_the_plugin_registers_the_local_transport",
        "tests/config/test_config_load.py::test_registry_fixture_is_what_the_tests_expect",
        "tests/cli/test_cli.py::test_plugins_table",
    ),
    "node_start": (
        "tests/local/test_local_lifecycle.py::test_a_new_transport_adopts_running_pods",
        "tests/core/test_node.py::test_a_node_registers_like_a_kubelet",
    ),
    "node_stop": (
        "tests/local/test_local_lifecycle.py::test_a_new_transport_adopts_running_pods",
        "tests/core/test_pods.py::test_a_pod_is_never_created_twice_across_a_restart",
    ),
    "node_capacity": ("tests/local/test_local_pods.py::test_max_pods_is_enforced_and_advertised",),
    "node_health": (
        "tests/core/test_node.py::test_unreachable_device_makes_the_node_not_ready_and_back",
        "tests/local/test_local_pods.py::test_node_health_and_state_dir",
    ),
    "list_pods": (
        "tests/local/test_local_lifecycle.py::test_a_deletion_interrupted_by_a_vkpy_restart_is_finished",
        "tests/local/test_local_pods.py::test_create_pod_is_idempotent",
    ),
    "create_pod": (
        "tests/core/test_pods.py::test_a_pod_runs_and_its_logs_and_status_reach_kubectl",
        "tests/core/test_pods.py::test_plugin_errors_become_events_and_are_retried",
        "tests/core/test_pods.py::test_a_pod_is_never_created_twice_across_a_restart",
        "tests/local/test_local_pods.py::test_create_pod_is_idempotent",
        "tests/examples/test_device_plugin.py::test_only_annotated_pods_run_niced",
        "tests/examples/test_device_plugin_hooks.py::test_pods_without_the_annotation_are_deferred",
    ),
    "update_pod": (
        "tests/core/test_pods.py::test_updates_reach_update_pod_once_and_status_changes_do_not",
        "tests/local/test_local_pods.py::test_create_pod_is_idempotent",
    ),
    "delete_pod": (
        "tests/core/test_pods.py::test_graceful_delete_ends_when_the_device_is_done_not_at_the_deadline",
        "tests/core/test_pods.py::test_force_delete_still_reaches_the_device",
        "tests/core/test_pods.py::test_a_same_name_pod_created_during_deletion_survives",
        "tests/local/test_local_lifecycle.py::test_delete_a_process_that_exits_on_term",
    ),
    "restart_container": (
        "tests/core/test_pods.py::test_restart_policy_and_crash_loop_backoff",
        "tests/local/test_local_lifecycle.py::test_restart_container_keeps_the_previous_log",
        "tests/examples/test_device_plugin_hooks.py::test_annotated_pods_run_niced_and_stay_niced_after_a_restart",
    ),
    "get_pod_status": (
        "tests/core/test_pods.py::test_a_pod_runs_and_its_logs_and_status_reach_kubectl",
        "tests/core/test_pods.py::test_a_flaky_link_never_causes_a_second_create",
        "tests/local/test_local_lifecycle.py::test_a_new_transport_adopts_running_pods",
    ),
    "get_container_logs": (
        "tests/core/test_pods.py::test_kubectl_logs_follow_streams_live",
        "tests/local/test_local_lifecycle.py::test_logs_tail_since_and_unknown_containers",
    ),
}

HOOKS = hook_signatures()


def _present(found: dict[str, tuple[str, str] | None]) -> dict[str, tuple[str, str]]:
    return {test_id: source for test_id, source in found.items() if source is not None}


def test_every_hook_is_listed() -> None:
    missing = sorted(set(HOOKS) - set(HOOK_TESTS))
    assert not missing, f"hooks without a test: {missing}; write one and list it in HOOK_TESTS"
    gone = sorted(set(HOOK_TESTS) - set(HOOKS))
    assert not gone, f"HOOK_TESTS lists hooks vkpy/hookspecs.py no longer has: {gone}"


@pytest.mark.parametrize("hook", sorted(HOOK_TESTS))
def test_the_listed_tests_exist_and_name_the_hook(hook: str) -> None:
    tests = HOOK_TESTS[hook]
    assert tests, f"{hook}: no test listed"
    found = {test_id: function_source(test_id) for test_id in tests}
    missing = [test_id for test_id, source in found.items() if source is None]
    assert not missing, f"{hook}: no such test function: {missing}"
    # At least one of them calls the hook by name (in the test, or in the file's fixtures and
    # helpers it uses): the list is not a guess. The others may exercise it through `vkpy run`.
    word = re.compile(rf"\b{hook}\b")
    named = [test_id for test_id, (function, file) in _present(found).items() if word.search(function + file)]
    assert named, f"{hook}: none of the listed tests, nor their files, name it"

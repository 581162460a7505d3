# vkpy-ssh device script: runs and supervises the containers of vkpy pods on a device.
#
# Uploaded by the vkpy `ssh` transport to <state_dir>/bin/device.sh (mode 0700) and run as
# `sh <that path> <command> <args...>`, every argument quoted by vkpy. Plain POSIX sh: it runs
# under dash, bash and busybox ash. What it needs besides the shell: setsid, mkfifo, mv, rm, date.
#
#   info [<state dir> <pods dir>] facts about the device, as key=value lines
#   start <pod dir>              start what the pod should run now (idempotent)
#   restart <pod dir> <name>     start a terminated container again
#   delete <pod dir> <grace>     stop the pod: TERM now, KILL after <grace> s, then remove its folder
#   status <pod dir>...          the state of each container of the given pods
#   sweep <pods dir>             the same for every pod under <pods dir>
#   serve <pods dir>             answer the commands above, read one a line from stdin
#   supervise <pod dir> <name>   (detached) run one container to its end, recording its output
#   reap <pod dir>               (detached) the deletion: signals, then removal of the folder
#   stamp <stdout|stderr>        (internal) stdin to CRI log records on stdout
#
# The files of a pod folder are the whole contract with vkpy (see docs/transports/ssh.md); a
# later vkpy may read files written by an earlier version of this script: keep them compatible.

set -u
umask 077
SELF=$0
TAB='	'
# The shells this script starts (bash for timestamps) must not run the login user's rc files: bash
# sources ~/.bashrc when SSH_CLIENT is set and it thinks it is a top-level shell (it does under
# dash, which leaves SHLVL at 0), and $BASH_ENV / $ENV for every script. A ~/.bashrc that runs
# `pyenv init` costs hundreds of milliseconds a start, and whatever it prints would land in the
# output it was started to read. Containers never see any of these (env -i).
unset SSH_CLIENT SSH2_CLIENT BASH_ENV ENV

# --- processes -----------------------------------------------------------------------------------

boot_id() {
	BOOT=
	[ -r /proc/sys/kernel/random/boot_id ] && read -r BOOT </proc/sys/kernel/random/boot_id
	return 0
}

# start_ticks PID: TICKS = the process's start time in clock ticks since boot; fails when the
# process is gone or a zombie. The command name may hold spaces: fields are read after the last ')'.
start_ticks() {
	TICKS=
	_st=
	read -r _st 2>/dev/null <"/proc/$1/stat" || [ -n "$_st" ] || return 1
	_st=${_st##*) }
	# shellcheck disable=SC2086
	set -- $_st
	[ "$#" -ge 20 ] || return 1
	[ "$1" = Z ] && return 1
	shift 19
	TICKS=$1
}

# identity PID: IDENT = "pid ticks boot_id", so that a recycled pid is not mistaken for it.
identity() {
	start_ticks "$1" || TICKS=-
	boot_id
	IDENT="$1 ${TICKS:--} ${BOOT:--}"
}

# alive FILE: is the process recorded in FILE (by identity) still running?
alive() {
	_pid=
	read -r _pid _ticks _boot _more 2>/dev/null <"$1" || [ -n "$_pid" ] || return 1
	case $_pid in '' | *[!0-9]*) return 1 ;; esac
	if [ -r /proc/self/stat ]; then
		boot_id
		if [ -n "$BOOT" ] && [ "${_boot:--}" != - ] && [ "$_boot" != "$BOOT" ]; then
			return 1
		fi
		start_ticks "$_pid" || return 1
		[ "${_ticks:--}" = - ] || [ "$_ticks" = "$TICKS" ]
	else
		kill -0 "$_pid" 2>/dev/null
	fi
}

# killgroup SIGNAL PGID. dash needs `--` before a negative pid; busybox refuses `--`.
killgroup() {
	if kill -s 0 -- "$$" 2>/dev/null; then
		kill -s "$1" -- "-$2" 2>/dev/null
	else
		kill -s "$1" "-$2" 2>/dev/null
	fi
}

nap() {
	sleep 0.2 2>/dev/null || sleep 1
}

now() {
	NOW=$(date -u +%Y-%m-%dT%H:%M:%SZ)
}

# put FILE TEXT: replace FILE so that a reader sees the old or the new content, never half.
put() {
	printf '%s\n' "$2" >"$1.tmp.$$" && mv -f "$1.tmp.$$" "$1"
}

# --- pods ----------------------------------------------------------------------------------------

load_pod() {
	INIT=
	APP=
	{
		read -r INIT
		read -r APP
	} <"$POD/containers" 2>/dev/null
	return 0
}

# A lock per pod (mkdir is atomic); a holder that died leaves a lock the next caller removes.
lock() {
	_tries=0
	while ! mkdir "$POD/.lock" 2>/dev/null; do
		[ -d "$POD" ] || return 1
		if [ -e "$POD/.lock/owner" ] && ! alive "$POD/.lock/owner"; then
			rm -rf "$POD/.lock"
			continue
		fi
		_tries=$((_tries + 1))
		if [ "$_tries" -gt 300 ]; then
			rm -rf "$POD/.lock"
			_tries=0
		fi
		nap
	done
	identity $$
	put "$POD/.lock/owner" "$IDENT"
}

unlock() {
	rm -rf "$POD/.lock"
}

# exit_field CONTAINER KEY: VALUE = that field of the container's exit record.
exit_field() {
	VALUE=
	[ -r "$POD/$1.exit" ] || return 1
	while IFS='=' read -r _k _v; do
		[ "$_k" = "$2" ] && VALUE=$_v
	done <"$POD/$1.exit"
	return 0
}

# spawn CONTAINER: start its supervisor in a session of its own, detached from this SSH session.
# The background child is never a process group leader, so setsid does not fork: $! is its pid.
spawn() {
	setsid sh "$SELF" supervise "$POD" "$1" </dev/null >/dev/null 2>>"$POD/supervisor.err" &
	identity $!
	put "$POD/$1.sup" "$IDENT"
}

# advance: start the next step of the pod (caller holds the lock). Init containers run one at a
# time, in order, each to success; then every app container starts. A failed or lost init
# container stops the sequence until it is restarted.
advance() {
	[ -e "$POD/deleting" ] && return 0
	load_pod
	for _c in $INIT; do
		if [ -e "$POD/$_c.exit" ]; then
			exit_field "$_c" exit_code
			[ "$VALUE" = 0 ] && continue
			return 0
		fi
		[ -e "$POD/$_c.sup" ] && return 0
		spawn "$_c"
		return 0
	done
	for _c in $APP; do
		[ -e "$POD/$_c.sup" ] || [ -e "$POD/$_c.exit" ] || spawn "$_c"
	done
	return 0
}

cmd_start() {
	POD=$1
	[ -f "$POD/containers" ] || {
		echo "no such pod: $POD" >&2
		exit 3
	}
	lock || exit 3
	advance
	unlock
}

cmd_restart() {
	POD=$1
	_c=$2
	[ -f "$POD/containers" ] || exit 3
	lock || exit 3
	if [ -e "$POD/deleting" ] || alive "$POD/$_c.sup"; then
		unlock
		return 0
	fi
	# A lost container whose program still runs must not run twice.
	if [ ! -e "$POD/$_c.exit" ] && alive "$POD/$_c.pid"; then
		killgroup KILL "$_pid"
	fi
	[ -e "$POD/$_c.log" ] && mv -f "$POD/$_c.log" "$POD/$_c.previous.log"
	rm -f "$POD/$_c.exit" "$POD/$_c.pid" "$POD/$_c.sup" "$POD/$_c.killed" "$POD/$_c.cannotrun"
	spawn "$_c"
	unlock
}

cmd_delete() {
	POD=$1
	[ -d "$POD" ] || return 0
	lock || return 0
	[ -e "$POD/deleting" ] || put "$POD/deleting" "$2"
	if ! alive "$POD/reaper"; then
		setsid sh "$SELF" reap "$POD" </dev/null >/dev/null 2>>"$POD/supervisor.err" &
		identity $!
		put "$POD/reaper" "$IDENT"
	fi
	unlock
}

# --- status --------------------------------------------------------------------------------------

# One tab-separated line per container:
#   C uid kind name state exit_code reason started_at finished_at message
# state: waiting | starting | running | exited | lost. Empty fields are "-".
state_line() {
	_kind=$1
	_c=$2
	_uid=${POD##*/}
	if [ -e "$POD/$_c.exit" ]; then
		_code=-
		_reason=-
		_started=-
		_finished=-
		_message=
		while IFS='=' read -r _k _v; do
			case $_k in
			exit_code) _code=$_v ;;
			reason) _reason=$_v ;;
			started_at) _started=${_v:--} ;;
			finished_at) _finished=${_v:--} ;;
			message) _message=$_v ;;
			esac
		done <"$POD/$_c.exit"
		printf 'C\t%s\t%s\t%s\texited\t%s\t%s\t%s\t%s\t%s\n' "$_uid" "$_kind" "$_c" \
			"$_code" "$_reason" "$_started" "$_finished" "$_message"
	elif alive "$POD/$_c.sup"; then
		_started=
		if [ -e "$POD/$_c.pid" ]; then
			read -r _p _t _b _started <"$POD/$_c.pid"
			printf 'C\t%s\t%s\t%s\trunning\t-\t-\t%s\t-\t\n' "$_uid" "$_kind" "$_c" "${_started:--}"
		else
			printf 'C\t%s\t%s\t%s\tstarting\t-\t-\t-\t-\t\n' "$_uid" "$_kind" "$_c"
		fi
	elif [ -e "$POD/$_c.sup" ]; then
		# It may have ended between the two looks.
		if [ -e "$POD/$_c.exit" ]; then
			state_line "$_kind" "$_c"
			return 0
		fi
		read -r _p _t _b <"$POD/$_c.sup"
		printf 'C\t%s\t%s\t%s\tlost\t-\t-\t-\t-\tthe supervisor (pid %s) ended without recording an exit\n' \
			"$_uid" "$_kind" "$_c" "$_p"
	else
		printf 'C\t%s\t%s\t%s\twaiting\t-\t-\t-\t-\t\n' "$_uid" "$_kind" "$_c"
	fi
}

# P uid present|absent deleting(0|1)
status_pod() {
	POD=$1
	if [ ! -f "$POD/containers" ]; then
		printf 'P\t%s\tabsent\t0\n' "${POD##*/}"
		return 0
	fi
	_deleting=0
	[ -e "$POD/deleting" ] && _deleting=1
	printf 'P\t%s\tpresent\t%s\n' "${POD##*/}" "$_deleting"
	load_pod
	for _n in $INIT; do state_line init "$_n"; done
	for _n in $APP; do state_line app "$_n"; done
}

cmd_status() {
	for _pod in "$@"; do status_pod "$_pod"; done
	echo END
}

cmd_sweep() {
	for _pod in "$1"/*; do
		[ -d "$_pod" ] && status_pod "$_pod"
	done
	echo END
}

# --- logs ----------------------------------------------------------------------------------------

# civil DAYS: DATE = "YYYY-MM-DDT" for a day count since 1970-01-01 (H. Hinnant's algorithm).
civil() {
	_z=$(($1 + 719468))
	_era=$((_z / 146097))
	_doe=$((_z - _era * 146097))
	_yoe=$(((_doe - _doe / 1460 + _doe / 36524 - _doe / 146096) / 365))
	_y=$((_yoe + _era * 400))
	_doy=$((_doe - (365 * _yoe + _yoe / 4 - _yoe / 100)))
	_mp=$(((5 * _doy + 2) / 153))
	_dd=$((_doy - (153 * _mp + 2) / 5 + 1))
	_m=$((_mp < 10 ? _mp + 3 : _mp - 9))
	_y=$((_m <= 2 ? _y + 1 : _y))
	DATE=$(printf '%04d-%02d-%02dT' "$_y" "$_m" "$_dd")
}

# With $EPOCHREALTIME (bash 5, busybox ash) a line costs no fork: microseconds, UTC by arithmetic.
stamp_fast() {
	_day=
	_line=
	while IFS= read -r _line; do
		_t=$EPOCHREALTIME
		_sec=${_t%%[.,]*}
		_us=${_t#*[.,]}000000
		_us=${_us%"${_us#??????}"}
		_d=$((_sec / 86400))
		_r=$((_sec - _d * 86400))
		[ "$_d" = "$_day" ] || {
			civil "$_d"
			_day=$_d
		}
		printf '%s%02d:%02d:%02d.%s000Z %s F %s\n' "$DATE" $((_r / 3600)) $((_r / 60 % 60)) $((_r % 60)) \
			"$_us" "$1" "$_line"
		_line=
	done
	[ -z "$_line" ] || {
		_t=$EPOCHREALTIME
		_sec=${_t%%[.,]*}
		_us=${_t#*[.,]}000000
		_us=${_us%"${_us#??????}"}
		_d=$((_sec / 86400))
		_r=$((_sec - _d * 86400))
		civil "$_d"
		printf '%s%02d:%02d:%02d.%s000Z %s P %s\n' "$DATE" $((_r / 3600)) $((_r / 60 % 60)) $((_r % 60)) \
			"$_us" "$1" "$_line"
	}
}

# Elsewhere, date(1) once per line: nanoseconds with GNU date, whole seconds with others.
stamp_date() {
	_format='+%Y-%m-%dT%H:%M:%S.000000000Z'
	case $(date -u +%N 2>/dev/null) in
	[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]) _format='+%Y-%m-%dT%H:%M:%S.%NZ' ;;
	esac
	_line=
	while IFS= read -r _line; do
		printf '%s %s F %s\n' "$(date -u "$_format")" "$1" "$_line"
		_line=
	done
	[ -z "$_line" ] || printf '%s %s P %s\n' "$(date -u "$_format")" "$1" "$_line"
}

cmd_stamp() {
	if [ -n "${EPOCHREALTIME:-}" ] && [ "${VKPY_STAMP:-}" != date ]; then
		stamp_fast "$1"
	else
		stamp_date "$1"
	fi
}

# STAMPER = the shell that timestamps output without a fork per line, or empty for this one.
pick_stamper() {
	STAMPER=
	[ "${VKPY_STAMP:-}" = date ] && return 0
	[ -n "${EPOCHREALTIME:-}" ] && return 0
	for _cand in bash busybox; do
		_path=$(command -v "$_cand" 2>/dev/null) || continue
		[ "$_cand" = busybox ] && _path="$_path sh"
		# shellcheck disable=SC2016,SC2086
		if $_path -c '[ -n "${EPOCHREALTIME:-}" ]' </dev/null >/dev/null 2>&1; then
			STAMPER=$_path
			return 0
		fi
	done
	return 0
}

# The stamper as picked once by `serve` for the supervisors it starts (VKPY_PICKED_STAMPER, set
# and exported there whatever was inherited: "-" for this shell), else picked now.
use_stamper() {
	case ${VKPY_PICKED_STAMPER:-} in
	'') pick_stamper ;;
	-) STAMPER= ;;
	*) STAMPER=$VKPY_PICKED_STAMPER ;;
	esac
}

# --- supervising one container -------------------------------------------------------------------

finish() {
	# finish CODE REASON MESSAGE STARTED_AT
	now
	put "$C.exit" "exit_code=$1
reason=$2
started_at=$4
finished_at=$NOW
message=$3"
}

cmd_supervise() {
	POD=$1
	C=$2
	cd "$POD" || exit 1
	# A stray signal must not end the supervisor before the container: it is noted, not obeyed.
	INTERRUPTED=
	trap 'INTERRUPTED=1' TERM HUP INT
	if [ -e deleting ]; then
		finish 143 Error "the pod was deleted before the container started" ""
		exit 0
	fi
	# Leftovers only after a restart: a first start costs no rm process.
	if [ -e "$C.out" ] || [ -e "$C.err" ] || [ -e "$C.killed" ] || [ -e "$C.cannotrun" ]; then
		rm -f "$C.out" "$C.err" "$C.killed" "$C.cannotrun"
	fi
	if ! mkfifo "$C.out" "$C.err"; then
		finish 128 ContainerCannotRun "cannot create the output pipes in $POD" ""
		exit 0
	fi
	use_stamper
	# shellcheck disable=SC2086
	if [ -n "$STAMPER" ]; then
		$STAMPER "$SELF" stamp stdout <"$C.out" >>"$C.log" &
		OUT=$!
		$STAMPER "$SELF" stamp stderr <"$C.err" >>"$C.log" &
		ERR=$!
	else
		cmd_stamp stdout <"$C.out" >>"$C.log" &
		OUT=$!
		cmd_stamp stderr <"$C.err" >>"$C.log" &
		ERR=$!
	fi
	now
	STARTED=$NOW
	# The container leads a session and process group of its own: a stop reaches all it started.
	setsid sh "$C.run" </dev/null >"$C.out" 2>"$C.err" &
	CPID=$!
	identity "$CPID"
	put "$C.pid" "$IDENT $STARTED"
	while :; do
		INTERRUPTED=
		wait "$CPID"
		RC=$?
		# An interrupted wait returns early; wait again while the container is not reaped.
		[ -n "$INTERRUPTED" ] && kill -0 "$CPID" 2>/dev/null && continue
		break
	done
	# As a container runtime does: what the main process left behind ends with it (and would
	# otherwise hold the output pipes open).
	killgroup KILL "$CPID"
	(
		sleep 2
		kill "$OUT" "$ERR" 2>/dev/null
	) &
	DRAIN=$!
	wait "$OUT" "$ERR" 2>/dev/null
	kill "$DRAIN" 2>/dev/null
	rm -f "$C.out" "$C.err"
	if [ -e "$C.cannotrun" ]; then
		read -r _msg <"$C.cannotrun"
		finish "$RC" ContainerCannotRun "$_msg" "$STARTED"
	elif [ "$RC" = 0 ]; then
		finish 0 Completed "" "$STARTED"
	elif [ "$RC" = 137 ] && [ -e "$C.killed" ]; then
		read -r _grace <"$C.killed"
		finish "$RC" Error "killed by SIGKILL after the grace period of ${_grace}s" "$STARTED"
	elif [ "$RC" -gt 128 ]; then
		_sig=$(kill -l "$((RC - 128))" 2>/dev/null) || _sig="signal $((RC - 128))"
		finish "$RC" Error "killed by SIG${_sig#SIG}" "$STARTED"
	else
		finish "$RC" Error "" "$STARTED"
	fi
	# An init container that succeeded lets the pod's sequence go on, even with vkpy away.
	load_pod
	if [ "$RC" = 0 ]; then
		case " $INIT " in
		*" $C "*)
			lock && {
				advance
				unlock
			}
			;;
		esac
	fi
	exit 0
}

# --- deleting ------------------------------------------------------------------------------------

cmd_reap() {
	POD=$1
	cd "$POD" || exit 0
	_grace=
	read -r _grace <deleting
	case $_grace in '' | *[!0-9]*) _grace=30 ;; esac
	_t0=$(date +%s)
	_termed=
	load_pod
	while :; do
		_elapsed=$(($(date +%s) - _t0))
		_busy=
		for _c in $INIT $APP; do
			if alive "$_c.pid"; then
				_busy=1
				_group=$_pid
				case " $_termed " in
				*" $_c "*) ;;
				*)
					killgroup TERM "$_group"
					_termed="$_termed $_c"
					;;
				esac
				if [ "$_elapsed" -ge "$_grace" ]; then
					[ -e "$_c.killed" ] || put "$_c.killed" "$_grace"
					killgroup KILL "$_group"
				fi
			elif alive "$_c.sup"; then
				# Starting (it will see the deleting mark) or draining output.
				_busy=1
				if [ "$_elapsed" -ge $((_grace + 10)) ]; then
					kill -s KILL "$_pid" 2>/dev/null
				fi
			fi
		done
		[ -n "$_busy" ] || break
		nap
	done
	cd / || exit 1
	_trash="${POD%/*}/.deleted-${POD##*/}-$$"
	mv "$POD" "$_trash" && rm -rf "$_trash"
}

# --- the control channel -------------------------------------------------------------------------

# serve <pods dir>: answer requests from stdin, one line each, until EOF. vkpy keeps one such
# channel open per connection, so a status sweep costs no SSH session nor login shell start.
#   request:  <id> <command> [<word> [<word>]]   words: [A-Za-z0-9._-], not starting with '.'
#   answer:   the command's output, then a line "@@<TAB><id><TAB><exit status>"
cmd_serve() {
	ROOT=$1
	# Probing for a shell costs a process start: once here rather than in every supervisor.
	pick_stamper
	VKPY_PICKED_STAMPER=${STAMPER:--}
	export VKPY_PICKED_STAMPER
	while IFS=' ' read -r _id _cmd _a _b _extra; do
		case $_id in '' | *[!0-9]*) continue ;; esac
		_ok=1
		for _w in "$_a" "$_b"; do
			case $_w in *[!A-Za-z0-9._-]* | .*) _ok= ;; esac
		done
		if [ -z "$_ok" ] || [ -n "$_extra" ]; then
			printf 'bad request\n@@\t%s\t2\n' "$_id"
			continue
		fi
		case $_cmd in
		ping) echo pong ;;
		sweep) (cmd_sweep "$ROOT") 2>&1 ;;
		status) (cmd_status "$ROOT/$_a") 2>&1 ;;
		start) (cmd_start "$ROOT/$_a") 2>&1 ;;
		restart) (cmd_restart "$ROOT/$_a" "$_b") 2>&1 ;;
		delete) (cmd_delete "$ROOT/$_a" "$_b") 2>&1 ;;
		*)
			echo "unknown command: $_cmd"
			false
			;;
		esac
		printf '@@\t%s\t%s\n' "$_id" "$?"
	done
}

# --- facts ---------------------------------------------------------------------------------------

# info [<state dir> <pods dir>]: also tighten the state folder and remove what an interrupted
# creation (a dropped link) or removal (a reboot) left behind.
cmd_info() {
	if [ "$#" -ge 2 ]; then
		chmod 700 "$1"
		for _d in "$2"/.creating-* "$2"/.deleted-*; do
			[ -e "$_d" ] && rm -rf "$_d"
		done
	fi
	echo "home=${HOME:-}"
	boot_id
	echo "boot_id=$BOOT"
	_cpus=$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc 2>/dev/null) || _cpus=
	echo "cpus=$_cpus"
	_mem=
	if [ -r /proc/meminfo ]; then
		while read -r _k _v _u; do
			[ "$_k" = MemTotal: ] && _mem=$_v
		done </proc/meminfo
	fi
	echo "memory_kib=$_mem"
	echo "arch=$(uname -m 2>/dev/null)"
	echo "os=$(uname -s 2>/dev/null)"
	_missing=
	for _tool in setsid mkfifo date mv rm env; do
		command -v "$_tool" >/dev/null 2>&1 || _missing="$_missing $_tool"
	done
	echo "missing=${_missing# }"
	if env --default-signal=INT true >/dev/null 2>&1; then
		echo "default_signal=yes"
	else
		echo "default_signal=no"
	fi
	pick_stamper
	if [ -n "$STAMPER" ] || [ -n "${EPOCHREALTIME:-}" ]; then
		echo "stamper=shell"
	else
		echo "stamper=date"
	fi
	echo END
}

# --- entry ---------------------------------------------------------------------------------------

# Sourced with VKPY_DEVICE_LIB=1 (tests): the functions only.
if [ "${VKPY_DEVICE_LIB:-}" = 1 ]; then
	return 0
fi

[ "$#" -ge 1 ] || {
	echo "usage: sh $SELF <command> <args...>" >&2
	exit 2
}
_command=$1
shift
case $_command in
info) cmd_info "$@" ;;
start) cmd_start "$1" ;;
restart) cmd_restart "$1" "$2" ;;
delete) cmd_delete "$1" "$2" ;;
status) cmd_status "$@" ;;
sweep) cmd_sweep "$1" ;;
serve) cmd_serve "$1" ;;
supervise) cmd_supervise "$1" "$2" ;;
reap) cmd_reap "$1" ;;
stamp) cmd_stamp "$1" ;;
*)
	echo "unknown command: $_command" >&2
	exit 2
	;;
esac

"""Exit codes of the operator commands (documented in `raylauncher --help` and `submit --help`)."""

OK = 0
ERROR = 1  # the API refused the request (its error code is printed), or a check failed
USAGE = 2  # bad arguments, or no target / incomplete stack
NOT_FOUND = 3  # no such job or pipeline
UNREACHABLE = 4  # the API did not answer
#: `submit --wait`: how the job ended when it did not succeed.
JOB_OUTCOMES = {"SUCCEEDED": OK, "FAILED": 10, "TIMED_OUT": 11, "CANCELLED": 12, "TEARDOWN_FAILED": 13}
INTERRUPTED = 130  # Ctrl-C while waiting (the job goes on; cancel it with `jobs cancel`)

EPILOG = f"""exit codes: 0 ok (with --wait: SUCCEEDED); {ERROR} the API refused (its error code is printed) or a
check failed; {USAGE} bad arguments or no target; {NOT_FOUND} no such job/pipeline; {UNREACHABLE} the API did not
answer; with --wait: {JOB_OUTCOMES['FAILED']} FAILED, {JOB_OUTCOMES['TIMED_OUT']} TIMED_OUT, {JOB_OUTCOMES['CANCELLED']} CANCELLED, {JOB_OUTCOMES['TEARDOWN_FAILED']} TEARDOWN_FAILED, {INTERRUPTED} interrupted."""

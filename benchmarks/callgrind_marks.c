/* Callgrind client requests callable from Python (ctypes): zero the counters before a stage,
 * dump them after it, so a run's instruction counts can be split by stage. */
#include <valgrind/callgrind.h>

void marks_zero(void)
{
	CALLGRIND_ZERO_STATS;
}

void marks_dump(const char *stage)
{
	CALLGRIND_DUMP_STATS_AT(stage);
}

/* open_loop N PATH: open(PATH, O_RDONLY) + close N times; prints the CPU nanoseconds (user + system: BPF programs run in the
 * caller's context) per pair, so other load on the machine does not inflate it.
 * The workload of bench_open: the densest stream of open events a single core makes. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s N PATH\n", argv[0]);
		return 2;
	}
	long n = strtol(argv[1], NULL, 10);
	struct timespec start, end;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &start);
	for (long i = 0; i < n; i++) {
		int fd = open(argv[2], O_RDONLY);
		if (fd < 0) {
			perror("open");
			return 1;
		}
		close(fd);
	}
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &end);
	double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
	printf("%.1f\n", ns / n);
	return 0;
}

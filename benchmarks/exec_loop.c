/* exec_loop N PATH: fork + exec PATH N times, waiting for each; prints the elapsed seconds.
 * The workload of bench_exec: the densest stream of process events a single core makes. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s N PATH\n", argv[0]);
		return 2;
	}
	long n = strtol(argv[1], NULL, 10);
	char *const child_argv[] = {argv[2], NULL};
	char *const child_env[] = {"PATH=/usr/bin:/bin", NULL};
	struct timespec start, end;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (long i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			perror("fork");
			return 1;
		}
		if (pid == 0) {
			execve(argv[2], child_argv, child_env);
			_exit(127);
		}
		int status;
		if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			fprintf(stderr, "child %d failed\n", pid);
			return 1;
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &end);
	printf("%.6f\n", (end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9);
	return 0;
}

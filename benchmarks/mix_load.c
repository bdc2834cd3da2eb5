/* A syscall mix for the agent benchmark: 60% open, 25% exec, 15% connect by syscall count,
 * offered at a target rate of syscalls per second, and the counts it really made.
 *
 * Per round of 20 syscalls: 12 opens (half of existing files under /etc, half of files in
 * SCRATCH_DIR), 5 execs of EXEC_TARGET (vfork + execve + wait: no page tables are copied, so
 * the exec share is bound by execve itself, not by fork) and 3 TCP connects to a loopback
 * listener this program owns (a child process accepts and closes; the client closes with an
 * RST, so no TIME_WAIT state piles up). WORKERS processes share the rate, each pacing its
 * rounds; a worker that falls behind catches up without sleeping, so the printed rate is
 * what was offered.
 *
 * usage: mix_load SECONDS SYSCALLS_PER_SECOND WORKERS EXEC_TARGET SCRATCH_DIR
 * prints: {"seconds", "opens", "execs", "connects", "failures", "port"} as one JSON line
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define OPENS_PER_ROUND 12
#define EXECS_PER_ROUND 5
#define CONNECTS_PER_ROUND 3
#define SYSCALLS_PER_ROUND (OPENS_PER_ROUND + EXECS_PER_ROUND + CONNECTS_PER_ROUND)
#define SCRATCH_FILES 6
#define MAX_WORKERS 64

/* Present and world-readable on any Debian host; none is a "sensitive file" to Falco's rules. */
static const char *const etc_files[] = {"/etc/hostname", "/etc/hosts", "/etc/os-release", "/etc/passwd",
					"/etc/group", "/etc/nsswitch.conf"};

struct counts {
	long opens, execs, connects, failures;
};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_until(double due)
{
	double wait = due - now();
	if (wait > 0) {
		struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
		nanosleep(&ts, NULL);
	}
}

static int listen_loopback(struct sockaddr_in *addr)
{
	int server = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	socklen_t len = sizeof(*addr);
	memset(addr, 0, sizeof(*addr));
	addr->sin_family = AF_INET;
	addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (server < 0 || bind(server, (struct sockaddr *)addr, sizeof(*addr)) < 0 || listen(server, 4096) < 0 ||
	    getsockname(server, (struct sockaddr *)addr, &len) < 0) {
		perror("listener");
		exit(1);
	}
	return server;
}

static pid_t start_acceptor(int server)
{
	pid_t pid = fork();
	if (pid == 0) {
		for (;;) {
			int conn = accept4(server, NULL, NULL, SOCK_CLOEXEC);
			if (conn >= 0)
				close(conn);
		}
	}
	return pid;
}

static void open_one(const char *path, struct counts *counts)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0)
		close(fd);
	else
		counts->failures++;
	counts->opens++;
}

static void exec_one(const char *target, struct counts *counts)
{
	char *const argv[] = {(char *)target, NULL};
	char *const envp[] = {NULL};
	int status;
	pid_t pid = vfork();
	if (pid == 0) {
		execve(target, argv, envp);
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		counts->failures++;
	counts->execs++;
}

static void connect_one(const struct sockaddr_in *addr, struct counts *counts)
{
	static const struct linger reset = {.l_onoff = 1, .l_linger = 0};
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0 || connect(s, (const struct sockaddr *)addr, sizeof(*addr)) < 0)
		counts->failures++;
	if (s >= 0) {
		setsockopt(s, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
		close(s);
	}
	counts->connects++;
}

static void work(double seconds, double rounds_per_second, const char *target, char scratch[][4096],
		 const struct sockaddr_in *addr, struct counts *counts)
{
	double start = now(), end = start + seconds;
	long rounds = 0;
	while (now() < end) {
		for (int i = 0; i < OPENS_PER_ROUND; i++)
			open_one(i % 2 ? etc_files[(rounds + i / 2) % 6] : scratch[(rounds + i / 2) % SCRATCH_FILES], counts);
		for (int i = 0; i < EXECS_PER_ROUND; i++)
			exec_one(target, counts);
		for (int i = 0; i < CONNECTS_PER_ROUND; i++)
			connect_one(addr, counts);
		rounds++;
		sleep_until(start + rounds / rounds_per_second);
	}
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: %s SECONDS SYSCALLS_PER_SECOND WORKERS EXEC_TARGET SCRATCH_DIR\n", argv[0]);
		return 2;
	}
	double seconds = atof(argv[1]), rate = atof(argv[2]);
	int workers = atoi(argv[3]);
	const char *target = argv[4];
	if (seconds <= 0 || rate <= 0 || workers < 1 || workers > MAX_WORKERS) {
		fprintf(stderr, "mix_load: SECONDS and SYSCALLS_PER_SECOND must be > 0, WORKERS 1..%d\n", MAX_WORKERS);
		return 2;
	}
	if (access(target, X_OK) < 0) {
		fprintf(stderr, "mix_load: %s: %s\n", target, strerror(errno));
		return 2;
	}
	static char scratch[SCRATCH_FILES][4096];
	for (int i = 0; i < SCRATCH_FILES; i++) {
		snprintf(scratch[i], sizeof(scratch[i]), "%s/mix-%d", argv[5], i);
		int fd = open(scratch[i], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd < 0) {
			perror(scratch[i]);
			return 2;
		}
		close(fd);
	}
	struct sockaddr_in addr;
	int server = listen_loopback(&addr);
	pid_t acceptor = start_acceptor(server);
	struct counts *shared =
		mmap(NULL, sizeof(struct counts) * workers, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (acceptor < 0 || shared == MAP_FAILED) {
		perror("mix_load");
		return 1;
	}
	pid_t worker_pids[MAX_WORKERS];
	double start = now();
	for (int w = 0; w < workers; w++) {
		worker_pids[w] = fork();
		if (worker_pids[w] == 0) {
			work(seconds, rate / SYSCALLS_PER_ROUND / workers, target, scratch, &addr, &shared[w]);
			_exit(0);
		}
		if (worker_pids[w] < 0) {
			perror("fork");
			return 1;
		}
	}
	for (int w = 0; w < workers; w++)
		waitpid(worker_pids[w], NULL, 0);
	double elapsed = now() - start;
	kill(acceptor, SIGKILL);
	waitpid(acceptor, NULL, 0);
	struct counts total = {0};
	for (int w = 0; w < workers; w++) {
		total.opens += shared[w].opens;
		total.execs += shared[w].execs;
		total.connects += shared[w].connects;
		total.failures += shared[w].failures;
	}
	printf("{\"seconds\": %.3f, \"opens\": %ld, \"execs\": %ld, \"connects\": %ld, \"failures\": %ld, \"port\": %d}\n",
	       elapsed, total.opens, total.execs, total.connects, total.failures, ntohs(addr.sin_port));
	return 0;
}

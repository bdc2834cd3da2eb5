/* A syscall mix for the agent benchmark: per round, 12 opens (half under /etc), 5 execs of
 * /bin/true (fork + exec + wait) and 3 TCP connects to a loopback listener: 60% open,
 * 25% exec, 15% connect by syscall count. Rounds are paced to a target rate and the loop
 * prints what it really generated, so the benchmark compares delivered with generated.
 *
 * usage: mix_load SECONDS ROUNDS_PER_SECOND PORT SCRATCH_FILE
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s SECONDS ROUNDS_PER_SECOND PORT SCRATCH_FILE\n", argv[0]);
        return 2;
    }
    double seconds = atof(argv[1]), rate = atof(argv[2]);
    int port = atoi(argv[3]);
    const char *scratch = argv[4];
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    long opens = 0, execs = 0, connects = 0, rounds = 0;
    double start = now(), end = start + seconds;
    while (now() < end) {
        for (int i = 0; i < 12; i++) {
            int fd = open(i % 2 ? "/etc/hostname" : scratch, O_RDONLY);
            if (fd >= 0)
                close(fd);
            opens++;
        }
        for (int i = 0; i < 5; i++) {
            pid_t pid = fork();
            if (pid == 0) {
                execl("/bin/true", "true", (char *)NULL);
                _exit(127);
            }
            if (pid > 0)
                waitpid(pid, NULL, 0);
            execs++;
        }
        for (int i = 0; i < 3; i++) {
            int s = socket(AF_INET, SOCK_STREAM, 0);
            if (s >= 0) {
                connect(s, (struct sockaddr *)&addr, sizeof(addr));
                close(s);
            }
            connects++;
        }
        rounds++;
        double due = start + rounds / rate;
        double wait = due - now();
        if (wait > 0) {
            struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
            nanosleep(&ts, NULL);
        }
    }
    printf("{\"seconds\": %.3f, \"opens\": %ld, \"execs\": %ld, \"connects\": %ld}\n", now() - start, opens, execs,
           connects);
    return 0;
}

/* Submits one IORING_OP_NOP and one IORING_OP_OPENAT through io_uring with raw syscalls
 * (no liburing): the kernel runs them without any open syscall. */
#include <fcntl.h>
#include <linux/io_uring.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	struct io_uring_params p;
	memset(&p, 0, sizeof(p));
	int ring = (int)syscall(__NR_io_uring_setup, 4, &p);
	if (ring < 0) {
		perror("io_uring_setup");
		return 1;
	}
	size_t sq_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
	char *sq = mmap(0, sq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQ_RING);
	struct io_uring_sqe *sqes = mmap(0, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
					 MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQES);
	if (sq == MAP_FAILED || sqes == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	unsigned *tail = (unsigned *)(sq + p.sq_off.tail);
	unsigned *array = (unsigned *)(sq + p.sq_off.array);
	unsigned mask = *(unsigned *)(sq + p.sq_off.ring_mask);
	unsigned t = *tail;
	memset(&sqes[0], 0, 2 * sizeof(struct io_uring_sqe));
	sqes[0].opcode = IORING_OP_NOP;
	sqes[0].user_data = 0x5e17;
	sqes[1].opcode = IORING_OP_OPENAT;
	sqes[1].fd = AT_FDCWD;
	sqes[1].addr = (unsigned long)argv[1];
	sqes[1].open_flags = O_RDONLY;
	sqes[1].user_data = 0x5e18;
	array[t & mask] = 0;
	array[(t + 1) & mask] = 1;
	__atomic_store_n(tail, t + 2, __ATOMIC_RELEASE);
	int submitted = (int)syscall(__NR_io_uring_enter, ring, 2, 2, IORING_ENTER_GETEVENTS, 0, 0);
	return submitted == 2 ? 0 : 1;
}

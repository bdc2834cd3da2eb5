/* Opens argv[1] three times through int $0x80 with eax = 5, the i386 open(2): from a 64-bit
 * process the kernel runs it as a 32-bit (compat) syscall. Built -no-pie so that the path
 * buffer (.bss) has an address that fits the 32-bit ebx register. */
#include <string.h>
#include <unistd.h>

static char path[256];

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	strncpy(path, argv[1], sizeof(path) - 1);
	int opened = 0;
	for (int i = 0; i < 3; i++) {
		long ret;
		__asm__ volatile("int $0x80"
				 : "=a"(ret)
				 : "a"(5L), "b"(path), "c"(0L), "d"(0L)
				 : "memory", "r8", "r9", "r10", "r11");
		if (ret >= 0) {
			opened++;
			close((int)ret);
		}
	}
	return opened == 3 ? 0 : 1;
}

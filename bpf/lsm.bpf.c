/* lsm.bpf.c - the same deny maps as enforce.bpf.c, enforced by BPF LSM hooks (-EPERM).
 *
 * Compiled after enforce.bpf.c (whose maps and helpers it uses) only where the kernel
 * loads BPF LSM programs; bcc attaches LSM_PROBE programs as it loads them, and they are
 * BPF links: they end with the agent process.
 *   bprm_check_security  exec of a denied file (by path or inode number), of a file under
 *                        a denied directory, or of a program whose name (basename of the
 *                        exec'd path, 15 bytes: what comm becomes) is denied
 *   file_open            open of a denied file or of a file under a denied directory
 *   socket_connect       connect to a denied address/port (IPv4, IPv6, IPv4-mapped)
 *   socket_sendmsg       sendto/sendmsg with a destination address (unconnected UDP):
 *                        socket_connect alone never sees these
 * Scopes (uid, cgroup) are checked by snt_applies() with the calling task's real uid and
 * cgroup: at bprm_check_security that is the process about to exec (a setuid exec keeps
 * its real uid, so the kill-at-exec fallback after the exec sees the same one).
 */
#include <linux/socket.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/net.h>

#define SNT_EPERM 1
#define SNT_NAME_BUF 256

struct snt_name_scratch {
	char path[SNT_NAME_BUF + 16];	/* slack: any start + 15 stays inside, whatever the compiler folds */
};
BPF_PERCPU_ARRAY(snt_lsm_name, struct snt_name_scratch, 1);

/* An offset the verifier sees masked, whatever the compiler concluded about its range. */
static __always_inline u64 snt_masked(u64 offset)
{
	asm volatile("%0 &= 0xff" : "+r"(offset));
	return offset;
}

/* comm as the kernel will set it: the exec'd path after its last '/', at most 15 bytes. */
static __always_inline void snt_comm_of_filename(const char *filename, struct snt_comm_key *comm)
{
	u32 zero = 0;
	u64 start = 0;
	struct snt_name_scratch *scratch = snt_lsm_name.lookup(&zero);
	if (!scratch)
		return;
	int len = bpf_probe_read_kernel_str(scratch->path, SNT_NAME_BUF, filename);
	if (len <= 0)
		return;
	/* Backwards to the last '/': every iteration either stops or leaves `start` unchanged,
	 * so the verifier's states stay few (a forward scan tracking the last '/' is quadratic). */
	for (int back = 0; back < SNT_NAME_BUF; back++) {
		int i = len - 2 - back;	/* len counts the NUL */
		if (i < 0)
			break;
		if (scratch->path[snt_masked(i)] == '/') {
			start = i + 1;
			break;
		}
	}
	bpf_probe_read_kernel(comm->comm, 15, scratch->path + snt_masked(start));
	/* The scratch keeps older, longer names after the NUL: clear them from the key. */
	int ended = 0;
#pragma unroll
	for (int j = 0; j < 16; j++) {
		if (ended || j == 15)
			comm->comm[j] = 0;
		else if (!comm->comm[j])
			ended = 1;
	}
}

LSM_PROBE(bprm_check_security, struct linux_binprm *bprm)
{
	struct file *file = 0;
	const char *filename = 0;
	struct snt_comm_key comm = {};
	if (snt_exec_exempt(bprm, &file))
		return 0;
	bpf_probe_read_kernel(&filename, sizeof(filename), &bprm->filename);
	if (filename) {
		snt_comm_of_filename(filename, &comm);
		if (snt_applies(snt_deny_exec_comm.lookup(&comm)))
			return -SNT_EPERM;
	}
	if (file && snt_file_denied(file, SNT_FOR_EXEC))
		return -SNT_EPERM;
	return 0;
}

LSM_PROBE(file_open, struct file *file)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (snt_protected(tgid))
		return 0;
	return snt_file_denied(file, SNT_FOR_OPEN) ? -SNT_EPERM : 0;
}

/* -EPERM when `address` (a sockaddr_in or sockaddr_in6 in kernel memory) is denied. */
static __always_inline int snt_lsm_address(struct sockaddr *address)
{
	u16 family = 0, port = 0;
	u32 addr[4] = {0, 0, 0, 0};
	if (!address)
		return 0;
	bpf_probe_read_kernel(&family, sizeof(family), &address->sa_family);
	if (family == AF_INET) {
		struct sockaddr_in *in4 = (struct sockaddr_in *)address;
		bpf_probe_read_kernel(&port, sizeof(port), &in4->sin_port);
		bpf_probe_read_kernel(&addr[3], sizeof(addr[3]), &in4->sin_addr.s_addr);
		addr[2] = 0xffff0000;
	} else if (family == AF_INET6) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)address;
		bpf_probe_read_kernel(&port, sizeof(port), &in6->sin6_port);
		bpf_probe_read_kernel(addr, sizeof(addr), &in6->sin6_addr);
	} else {
		return 0;
	}
	return snt_net_denied(port, addr) ? -SNT_EPERM : 0;
}

LSM_PROBE(socket_connect, struct socket *sock, struct sockaddr *address, int addrlen)
{
	return snt_lsm_address(address);
}

LSM_PROBE(socket_sendmsg, struct socket *sock, struct msghdr *msg, int size)
{
	void *name = 0;
	bpf_probe_read_kernel(&name, sizeof(name), &msg->msg_name);
	return snt_lsm_address((struct sockaddr *)name);
}

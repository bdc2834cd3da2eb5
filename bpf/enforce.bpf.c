/* enforce.bpf.c - kill and deny decisions that userspace pushes into maps.
 *
 * Userspace (sentinel.actions.enforce) compiles deny rules into the snt_deny_* maps and
 * kill decisions into snt_kill; these programs only look keys up. Every deny value is a
 * hit counter (so `sentinel enforce list` can show what each entry did) plus the scopes it
 * applies to: none means everyone, else the process must match one (real uid and/or cgroup
 * v2: exactly that cgroup, or any cgroup below it). Rules that share a key with different
 * scopes share one value holding all their scopes; userspace writes the union.
 *
 * Programs, attached only while the maps they read have entries:
 *   snt_exec_kill   raw sched_process_exec: exec by name / under a directory (and a
 *                   specific file when fanotify is unavailable) gets SIGKILL before the
 *                   new image runs its first instruction
 *   snt_open_kill   sys_exit_open*: the opened file's inode, or a directory above it, is
 *                   denied: SIGKILL (the open, and any O_CREAT/O_TRUNC, has happened)
 *   snt_kill_check  raw sys_enter: a process userspace decided to kill dies at its next syscall
 *   snt_connect4/6, snt_sendmsg4/6  cgroup sock_addr: a denied address/port gets EPERM
 * lsm.bpf.c adds the LSM programs over the same maps where the kernel loads them.
 */
#include <linux/sched.h>
#include <linux/fs.h>
#include <linux/fdtable.h>
#include <linux/dcache.h>
#include <linux/binfmts.h>

#define SNT_SIGKILL 9
#define SNT_DIR_DEPTH 32	/* directories walked above a file when looking for a denied prefix */
/* /proc gives start times in clock ticks (10 ms): a kill entry matches the process that
 * started within this much of its start_ns; a pid is not reused that fast. */
#define SNT_START_SLACK_NS 20000000ULL

/* A file: inode number and the kernel dev_t of its superblock (MKDEV: major << 20 | minor). */
struct snt_inode_key {
	u64 ino;
	u32 dev;
	u32 _pad;
};

struct snt_comm_key {
	char comm[16];
};

/* data = destination port (network order, 0 = any) + IPv6 address (IPv4 as ::ffff:a.b.c.d). */
struct snt_net_key {
	u32 prefixlen;
	u8 data[20];
};

#define SNT_MAX_SCOPES 8
#define SNT_ANY_UID 0xffffffffU
#define SNT_SCOPE_BELOW 1	/* the cgroups under cgroup_id, not cgroup_id itself */

struct snt_scope {
	u64 cgroup_id;		/* cgroup v2 id (kernfs inode); 0: any cgroup */
	u32 uid;		/* real uid; SNT_ANY_UID: any user */
	u16 cgroup_level;	/* depth of cgroup_id below the root (root = 0) */
	u16 flags;
};

struct snt_deny_value {
	u64 hits;
	u32 nscopes;	/* 0: everyone */
	u32 _pad;
	struct snt_scope scopes[SNT_MAX_SCOPES];
};

struct snt_kill_entry {
	u64 start_ns;	/* the process image to kill: its group leader's start_boottime */
	u64 hits;
};

struct snt_config {
	u32 agent_pid;
	u32 _pad;
};

BPF_ARRAY(snt_enf_config, struct snt_config, 1);
BPF_HASH(snt_deny_exec_ino, struct snt_inode_key, struct snt_deny_value, 4096);
BPF_HASH(snt_deny_exec_dir, struct snt_inode_key, struct snt_deny_value, 1024);
BPF_HASH(snt_deny_exec_comm, struct snt_comm_key, struct snt_deny_value, 1024);
BPF_HASH(snt_deny_open_ino, struct snt_inode_key, struct snt_deny_value, 4096);
BPF_HASH(snt_deny_open_dir, struct snt_inode_key, struct snt_deny_value, 1024);
BPF_HASH(snt_allow_exe, struct snt_inode_key, u64, 1024);
BPF_LPM_TRIE(snt_deny_net, struct snt_net_key, struct snt_deny_value, 4096);
BPF_HASH(snt_kill, u32, struct snt_kill_entry, 4096);

static __always_inline void snt_count(u64 *hits)
{
	__sync_fetch_and_add(hits, 1);
}

/* 1 when the current process is in one of the value's scopes (counted as a hit). */
static __always_inline int snt_applies(struct snt_deny_value *value)
{
	u32 uid = (u32)bpf_get_current_uid_gid();
	u32 count;
	if (!value)
		return 0;
	count = value->nscopes;
	if (count == 0) {
		snt_count(&value->hits);
		return 1;
	}
#pragma unroll
	for (int i = 0; i < SNT_MAX_SCOPES; i++) {
		struct snt_scope *scope = &value->scopes[i];
		if (i >= count)
			break;
		if (scope->uid != SNT_ANY_UID && scope->uid != uid)
			continue;
		if (scope->cgroup_id) {
			u64 cgroup = bpf_get_current_cgroup_id();
			if (scope->flags & SNT_SCOPE_BELOW) {
				if (cgroup == scope->cgroup_id ||
				    bpf_get_current_ancestor_cgroup_id(scope->cgroup_level) != scope->cgroup_id)
					continue;
			} else if (cgroup != scope->cgroup_id) {
				continue;
			}
		}
		snt_count(&value->hits);
		return 1;
	}
	return 0;
}

/* pid 1 and the agent are never killed or denied by a program. */
static __always_inline int snt_protected(u32 tgid)
{
	u32 zero = 0;
	struct snt_config *config = snt_enf_config.lookup(&zero);
	return tgid == 1 || (config && config->agent_pid == tgid);
}

static __always_inline void snt_inode_of(struct dentry *dentry, struct snt_inode_key *key)
{
	struct inode *inode = 0;
	struct super_block *sb = 0;
	bpf_probe_read_kernel(&inode, sizeof(inode), &dentry->d_inode);
	key->ino = 0;
	key->dev = 0;
	key->_pad = 0;
	if (!inode)
		return;
	bpf_probe_read_kernel(&key->ino, sizeof(key->ino), &inode->i_ino);
	bpf_probe_read_kernel(&sb, sizeof(sb), &inode->i_sb);
	if (sb)
		bpf_probe_read_kernel(&key->dev, sizeof(key->dev), &sb->s_dev);
}

#define SNT_FOR_EXEC 0
#define SNT_FOR_OPEN 1

/* bcc rewrites map calls only on a map named in place, so the exec/open choice is a flag. */
static __always_inline struct snt_deny_value *snt_lookup_file(int what, struct snt_inode_key *key)
{
	return what == SNT_FOR_OPEN ? snt_deny_open_ino.lookup(key) : snt_deny_exec_ino.lookup(key);
}

static __always_inline struct snt_deny_value *snt_lookup_dir(int what, struct snt_inode_key *key)
{
	return what == SNT_FOR_OPEN ? snt_deny_open_dir.lookup(key) : snt_deny_exec_dir.lookup(key);
}

/* 1 when `file`'s inode is denied for `what` (on its device, or by inode number on any
 * device: dev 0), or a directory above it (same mount) is, for the current process. */
static __always_inline int snt_file_denied(struct file *file, int what)
{
	struct dentry *dentry = 0, *parent = 0;
	struct snt_inode_key key = {};
	bpf_probe_read_kernel(&dentry, sizeof(dentry), &file->f_path.dentry);
	if (!dentry)
		return 0;
	snt_inode_of(dentry, &key);
	if (snt_applies(snt_lookup_file(what, &key)))
		return 1;
	key.dev = 0;
	if (snt_applies(snt_lookup_file(what, &key)))
		return 1;
	for (int depth = 0; depth < SNT_DIR_DEPTH; depth++) {
		bpf_probe_read_kernel(&parent, sizeof(parent), &dentry->d_parent);
		if (!parent || parent == dentry)
			return 0;
		dentry = parent;
		snt_inode_of(dentry, &key);
		if (snt_applies(snt_lookup_dir(what, &key)))
			return 1;
	}
	return 0;
}

static __always_inline int snt_exe_allowed(struct file *file)
{
	struct dentry *dentry = 0;
	struct snt_inode_key key = {};
	bpf_probe_read_kernel(&dentry, sizeof(dentry), &file->f_path.dentry);
	if (!dentry)
		return 0;
	snt_inode_of(dentry, &key);
	return snt_allow_exe.lookup(&key) != 0;
}

/* Whether an exec escapes every deny (a protected process, or an allowed exe); `*file` is
 * the file being exec'd either way (NULL if unreadable). Shared by the kill-at-exec
 * fallback here and the LSM hook in lsm.bpf.c, so both exempt exactly the same execs. */
static __always_inline int snt_exec_exempt(struct linux_binprm *bprm, struct file **file)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	*file = 0;
	if (snt_protected(tgid))
		return 1;
	bpf_probe_read_kernel(file, sizeof(*file), &bprm->file);
	return *file && snt_exe_allowed(*file);
}

int snt_exec_kill(struct bpf_raw_tracepoint_args *ctx)
{
	struct linux_binprm *bprm = (struct linux_binprm *)ctx->args[2];
	struct file *file = 0;
	struct snt_comm_key comm = {};
	if (snt_exec_exempt(bprm, &file))
		return 0;
	bpf_get_current_comm(&comm.comm, sizeof(comm.comm));
	if (snt_applies(snt_deny_exec_comm.lookup(&comm))) {
		bpf_send_signal(SNT_SIGKILL);
		return 0;
	}
	if (file && snt_file_denied(file, SNT_FOR_EXEC))
		bpf_send_signal(SNT_SIGKILL);
	return 0;
}

struct snt_sys_exit_args {
	u64 common;
	s32 syscall_nr;
	u32 _pad;
	s64 ret;
};

int snt_open_kill(struct snt_sys_exit_args *args)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct files_struct *files = 0;
	struct fdtable *fdt = 0;
	struct file **fds = 0;
	struct file *file = 0;
	s64 fd = args->ret;
	u32 max_fds = 0;
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (fd < 0 || snt_protected(tgid))
		return 0;
	bpf_probe_read_kernel(&files, sizeof(files), &task->files);
	if (!files)
		return 0;
	bpf_probe_read_kernel(&fdt, sizeof(fdt), &files->fdt);
	if (!fdt)
		return 0;
	bpf_probe_read_kernel(&max_fds, sizeof(max_fds), &fdt->max_fds);
	if ((u64)fd >= max_fds)
		return 0;
	bpf_probe_read_kernel(&fds, sizeof(fds), &fdt->fd);
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	if (file && snt_file_denied(file, SNT_FOR_OPEN))
		bpf_send_signal(SNT_SIGKILL);
	return 0;
}

int snt_kill_check(struct bpf_raw_tracepoint_args *ctx)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct snt_kill_entry *entry = snt_kill.lookup(&tgid);
	struct task_struct *task, *leader = 0;
	u64 start_ns = 0;
	if (!entry)
		return 0;
	task = (struct task_struct *)bpf_get_current_task();
	bpf_probe_read_kernel(&leader, sizeof(leader), &task->group_leader);
	if (leader)
		bpf_probe_read_kernel(&start_ns, sizeof(start_ns), &leader->start_boottime);
	if (start_ns + SNT_START_SLACK_NS < entry->start_ns ||
	    start_ns > entry->start_ns + SNT_START_SLACK_NS || snt_protected(tgid))
		return 0;	/* the pid was reused by another process: not ours to kill */
	snt_count(&entry->hits);
	bpf_send_signal(SNT_SIGKILL);
	return 0;
}

#ifdef SNT_NET_UNSCOPED
/* Kernels whose cgroup sock_addr programs lack the uid/cgroup helpers: only unscoped
 * network entries exist there (userspace refuses scoped ones). */
static __always_inline int snt_net_applies(struct snt_deny_value *value)
{
	if (!value || value->nscopes)
		return 0;
	snt_count(&value->hits);
	return 1;
}
#else
#define snt_net_applies snt_applies
#endif

/* 1 when the destination (port, 16-byte address) is denied, for this port or any port.
 * The trie gives the longest prefix only: userspace folds the scopes of every shorter
 * prefix (same port) into each value, so the longest match decides for all of them. */
static __always_inline int snt_net_denied(u16 port, const void *addr16)
{
	struct snt_net_key key = {};
	key.prefixlen = 144;
	__builtin_memcpy(&key.data[0], &port, 2);
	__builtin_memcpy(&key.data[2], addr16, 16);
	if (snt_net_applies(snt_deny_net.lookup(&key)))
		return 1;
	key.data[0] = 0;
	key.data[1] = 0;
	return snt_net_applies(snt_deny_net.lookup(&key));
}

static __always_inline int snt_sock_addr4(struct bpf_sock_addr *ctx)
{
	u32 addr[4] = {0, 0, 0, 0};
	u16 port = (u16)ctx->user_port;
	addr[2] = 0xffff0000;	/* ::ffff:0:0/96 in network order on a little-endian host */
	addr[3] = ctx->user_ip4;
	return snt_net_denied(port, addr) ? 0 : 1;
}

static __always_inline int snt_sock_addr6(struct bpf_sock_addr *ctx)
{
	u32 addr[4];
	u16 port = (u16)ctx->user_port;
	addr[0] = ctx->user_ip6[0];
	addr[1] = ctx->user_ip6[1];
	addr[2] = ctx->user_ip6[2];
	addr[3] = ctx->user_ip6[3];
	return snt_net_denied(port, addr) ? 0 : 1;
}

int snt_connect4(struct bpf_sock_addr *ctx) { return snt_sock_addr4(ctx); }
int snt_connect6(struct bpf_sock_addr *ctx) { return snt_sock_addr6(ctx); }
int snt_sendmsg4(struct bpf_sock_addr *ctx) { return snt_sock_addr4(ctx); }
int snt_sendmsg6(struct bpf_sock_addr *ctx) { return snt_sock_addr6(ctx); }

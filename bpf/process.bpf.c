/* process.bpf.c - the process lifecycle: exec (and failed exec), clone, exit, chdir.
 *
 * Each event is read where it is final: an exec at sched_process_exec (new image, new
 * credentials, argv in the new mm), a failed exec at the syscall exit, the child of a
 * clone at sched_process_fork, an exit when the last thread of the group leaves.
 * The syscall entry programs only remember arguments per thread for the exit side.
 */
#include "sentinel_common.h"

/* What a syscall entry leaves for the exit side / the sched tracepoints, per thread. */
struct sentinel_enter {
	u32 syscall;    /* enum sentinel_syscall */
	s32 dirfd;
	u64 filename;   /* user pointer */
	u64 argv;       /* user pointer */
	u64 flags;      /* execveat flags / clone flags */
};

BPF_TABLE("lru_hash", u32, struct sentinel_enter, snt_enter, 16384);

/* Environment variables kept from an exec: "NAME=" prefixes, filled from configuration. */
struct sentinel_env_key {
	u32 prefixlen;
	char data[SENTINEL_ENV_NAME_MAX];
};
BPF_LPM_TRIE(snt_env_keep, struct sentinel_env_key, u8, 256);

/* One environment entry being examined; its first bytes double as the trie lookup key. */
struct sentinel_env_scratch {
	u32 prefixlen;
	char data[SENTINEL_ENV_VAR_MAX];
};
BPF_PERCPU_ARRAY(snt_env_buf, struct sentinel_env_scratch, 1);

static __always_inline void sentinel_remember(u32 syscall, s32 dirfd, u64 filename, u64 argv,
					      u64 flags)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct sentinel_enter enter = {};
	enter.syscall = syscall;
	enter.dirfd = dirfd;
	enter.filename = filename;
	enter.argv = argv;
	enter.flags = flags;
	snt_enter.update(&tid, &enter);
}

int snt_execve_enter(struct sentinel_sys_enter_args *args)
{
	sentinel_remember(SENTINEL_SYSCALL_EXECVE, -100, args->args[0], args->args[1], 0);
	return 0;
}

int snt_execveat_enter(struct sentinel_sys_enter_args *args)
{
	sentinel_remember(SENTINEL_SYSCALL_EXECVEAT, (s32)args->args[0], args->args[1],
			  args->args[2], args->args[4]);
	return 0;
}

int snt_clone_enter(struct sentinel_sys_enter_args *args)
{
	sentinel_remember(SENTINEL_SYSCALL_CLONE, 0, 0, 0, args->args[0]);
	return 0;
}

int snt_clone3_enter(struct sentinel_sys_enter_args *args)
{
	u64 flags = 0;  /* struct clone_args starts with its u64 flags */
	bpf_probe_read_user(&flags, sizeof(flags), (void *)args->args[0]);
	sentinel_remember(SENTINEL_SYSCALL_CLONE3, 0, 0, 0, flags);
	return 0;
}

int snt_fork_enter(struct sentinel_sys_enter_args *args)
{
	sentinel_remember(SENTINEL_SYSCALL_FORK, 0, 0, 0, 17 /* SIGCHLD */);
	return 0;
}

int snt_vfork_enter(struct sentinel_sys_enter_args *args)
{
	/* CLONE_VFORK | CLONE_VM | SIGCHLD */
	sentinel_remember(SENTINEL_SYSCALL_VFORK, 0, 0, 0, 0x00004000 | 0x00000100 | 17);
	return 0;
}

/* The pid of `pid_ptr` as seen from namespace level `level` (0 when not visible there). */
static __always_inline u32 sentinel_pid_nr_at(struct pid *pid_ptr, u32 level)
{
	if (!pid_ptr)
		return 0;
	u32 pid_level = SENTINEL_FIELD(pid_ptr, level);
	if (pid_level < level)
		return 0;
	struct upid upid = {};
	bpf_probe_read_kernel(&upid, sizeof(upid), &pid_ptr->numbers[level & 31]);
	return upid.nr;
}

static __always_inline s64 sentinel_ns(s64 sec, s64 nsec)
{
	return sec * 1000000000LL + nsec;
}

static __always_inline void sentinel_exe_inode(struct sentinel_exec *e, struct file *file)
{
	struct inode *inode = SENTINEL_FIELD(file, f_inode);
	struct super_block *sb = SENTINEL_FIELD(inode, i_sb);
	e->exe_ino = SENTINEL_FIELD(inode, i_ino);
	e->exe_dev = SENTINEL_FIELD(sb, s_dev);
	e->exe_mode = SENTINEL_FIELD(inode, i_mode);
	e->exe_uid = SENTINEL_FIELD(inode, i_uid.val);
	e->exe_gid = SENTINEL_FIELD(inode, i_gid.val);
#if defined(SENTINEL_HAVE_INODE_TIME_SEC)
	/* multigrain timestamps keep a "queried" flag in bit 31 of i_ctime_nsec: nanoseconds
	 * never exceed 30 bits, so masking is right on every kernel */
	e->exe_mtime_ns = sentinel_ns(SENTINEL_FIELD(inode, i_mtime_sec), SENTINEL_FIELD(inode, i_mtime_nsec) & 0x3FFFFFFF);
	e->exe_ctime_ns = sentinel_ns(SENTINEL_FIELD(inode, i_ctime_sec), SENTINEL_FIELD(inode, i_ctime_nsec) & 0x3FFFFFFF);
#elif defined(SENTINEL_HAVE_INODE___I_CTIME)
	e->exe_mtime_ns = sentinel_ns(SENTINEL_FIELD(inode, i_mtime.tv_sec), SENTINEL_FIELD(inode, i_mtime.tv_nsec));
	e->exe_ctime_ns = sentinel_ns(SENTINEL_FIELD(inode, __i_ctime.tv_sec), SENTINEL_FIELD(inode, __i_ctime.tv_nsec));
#else
	e->exe_mtime_ns = sentinel_ns(SENTINEL_FIELD(inode, i_mtime.tv_sec), SENTINEL_FIELD(inode, i_mtime.tv_nsec));
	e->exe_ctime_ns = sentinel_ns(SENTINEL_FIELD(inode, i_ctime.tv_sec), SENTINEL_FIELD(inode, i_ctime.tv_nsec));
#endif
	unsigned long magic = SENTINEL_FIELD(sb, s_magic);
	if (magic == SENTINEL_TMPFS_MAGIC || magic == SENTINEL_HUGETLBFS_MAGIC) {
		/* memfd_create() files live on the kernel-internal shm mount, named "memfd:..." */
		struct vfsmount *mnt = SENTINEL_FIELD(file, f_path.mnt);
		struct dentry *dentry = SENTINEL_FIELD(file, f_path.dentry);
		const unsigned char *name = SENTINEL_FIELD(dentry, d_name.name);
		char prefix[6] = {};
		bpf_probe_read_kernel(prefix, sizeof(prefix), name);
		int mnt_flags = SENTINEL_FIELD(mnt, mnt_flags);
		if ((mnt_flags & SENTINEL_MNT_INTERNAL) && prefix[0] == 'm' && prefix[1] == 'e' &&
		    prefix[2] == 'm' && prefix[3] == 'f' && prefix[4] == 'd' && prefix[5] == ':')
			e->flags |= SENTINEL_F_EXE_MEMFD;
	}
#if defined(SENTINEL_OVL_OFF_VFS_INODE) && defined(SENTINEL_OVL_OFF_UPPERDENTRY)
	if (magic == SENTINEL_OVERLAYFS_MAGIC) {
		/* an overlay inode has an upper dentry once the file exists on the upper layer;
		 * struct ovl_inode is private to fs/overlayfs: offsets from BTF */
		char *ovl = (char *)inode - SENTINEL_OVL_OFF_VFS_INODE;
		void *upper = 0;
		bpf_probe_read_kernel(&upper, sizeof(upper), ovl + SENTINEL_OVL_OFF_UPPERDENTRY);
		if (upper)
			e->flags |= SENTINEL_F_EXE_UPPER;
	}
#endif
}

/* Copy the kept environment entries ("NAME=value" whose "NAME=" is in snt_env_keep). */
static __always_inline void sentinel_put_env(char *tail, struct sentinel_cursor *cur,
					     unsigned long start, unsigned long end)
{
	u32 zero = 0;
	struct sentinel_env_scratch *var = snt_env_buf.lookup(&zero);
	if (!var)
		return;
	unsigned long p = start;
	int i;
	for (i = 0; i < SENTINEL_ENV_VARS; i++) {
		if (p >= end)
			return;
		long n = bpf_probe_read_user_str(var->data, sizeof(var->data), (void *)p);
		if (n <= 0)
			return;
		if (n >= (long)sizeof(var->data)) {
			cur->flags |= SENTINEL_F_ENV_TRUNC;  /* cannot find where the next one starts */
			return;
		}
		p += n;
		var->prefixlen = SENTINEL_ENV_NAME_MAX * 8;
		if (!snt_env_keep.lookup((struct sentinel_env_key *)var))
			continue;
		u32 off = cur->off;
		if (off >= SENTINEL_TAIL_MAX) {
			cur->flags |= SENTINEL_F_ENV_TRUNC | SENTINEL_F_TAIL_FULL;
			return;
		}
		u32 len = (u32)n & (SENTINEL_ENV_VAR_MAX - 1);
		bpf_probe_read_kernel(tail + (off & SENTINEL_TAIL_MASK), len, var->data);
		cur->off = off + len;
	}
	if (p < end)
		cur->flags |= SENTINEL_F_ENV_TRUNC;
}

int snt_exec(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	u32 old_pid = (u32)ctx->args[1];
	struct linux_binprm *bprm = (struct linux_binprm *)ctx->args[2];
	char *rec = sentinel_record();
	if (!rec)
		return 0;
	struct sentinel_exec *e = (struct sentinel_exec *)rec;
	__builtin_memset(e, 0, sizeof(*e));
	sentinel_fill_header(&e->hdr, SENTINEL_OP_EXEC, task);
	e->old_pid = old_pid;

	struct sentinel_enter *enter = snt_enter.lookup(&old_pid);
	if (enter) {
		if (enter->syscall == SENTINEL_SYSCALL_EXECVEAT)
			e->flags |= SENTINEL_F_EXECVEAT;
		snt_enter.delete(&old_pid);
	} else {
		e->flags |= SENTINEL_F_NO_ENTER;
	}

	struct task_struct *parent = SENTINEL_FIELD(task, real_parent);
	e->ppid = SENTINEL_FIELD(parent, tgid);
	e->parent_start_ns = sentinel_start_ns(parent);
	e->cgroups_key = (u64)SENTINEL_FIELD(task, cgroups);

	const struct cred *cred = SENTINEL_FIELD(task, cred);
	e->uid = SENTINEL_FIELD(cred, uid.val);
	e->gid = SENTINEL_FIELD(cred, gid.val);
	e->euid = SENTINEL_FIELD(cred, euid.val);
	e->egid = SENTINEL_FIELD(cred, egid.val);
	/* kernel_cap_t is 64 bits on every kernel (u32[2] before 6.3, u64 after) */
	bpf_probe_read_kernel(&e->cap_permitted, 8, &cred->cap_permitted);
	bpf_probe_read_kernel(&e->cap_effective, 8, &cred->cap_effective);
	bpf_probe_read_kernel(&e->cap_inheritable, 8, &cred->cap_inheritable);
#ifdef SENTINEL_HAVE_TASK_LOGINUID
	e->loginuid = SENTINEL_FIELD(task, loginuid.val);
#else
	e->loginuid = 0xFFFFFFFF;
#endif

	struct pid *thread_pid = SENTINEL_FIELD(task, thread_pid);
	u32 level = SENTINEL_FIELD(thread_pid, level);
	e->vpid = sentinel_pid_nr_at(thread_pid, level);
	struct signal_struct *signal = SENTINEL_FIELD(task, signal);
	struct pid *pgrp = SENTINEL_FIELD(signal, pids[SENTINEL_PIDTYPE_PGID]);
	struct pid *session = SENTINEL_FIELD(signal, pids[SENTINEL_PIDTYPE_SID]);
	e->pgid = sentinel_pid_nr_at(pgrp, 0);
	e->vpgid = sentinel_pid_nr_at(pgrp, level);
	e->sid = sentinel_pid_nr_at(session, 0);
	struct tty_struct *tty = SENTINEL_FIELD(signal, tty);
	if (tty) {
		struct tty_driver *driver = SENTINEL_FIELD(tty, driver);
		u32 major = SENTINEL_FIELD(driver, major);
		u32 minor = SENTINEL_FIELD(driver, minor_start) + SENTINEL_FIELD(tty, index);
		e->tty = (major << 20) | (minor & 0xFFFFF);
	}

	struct file *file = SENTINEL_FIELD(bprm, file);
	sentinel_exe_inode(e, file);
#ifdef SENTINEL_HAVE_BPRM_EXECUTABLE
	if (SENTINEL_FIELD(bprm, executable))
		e->flags |= SENTINEL_F_EXECFD;
#endif

	struct sentinel_cursor *cur = sentinel_cursor_reset();
	if (!cur)
		return 0;
	char *tail = rec + sizeof(*e);
	u32 start;

	start = cur->off;
	sentinel_put_kstr(tail, cur, SENTINEL_FIELD(bprm, filename));
	e->filename_len = cur->off - start;
	start = cur->off;
	sentinel_put_kstr(tail, cur, SENTINEL_FIELD(bprm, interp));
	e->interp_len = cur->off - start;

	struct fs_struct *fs = SENTINEL_FIELD(task, fs);
	struct dentry *root_dentry = SENTINEL_FIELD(fs, root.dentry);
	struct vfsmount *root_mnt = SENTINEL_FIELD(fs, root.mnt);
	start = cur->off;
	sentinel_put_path(tail, cur, SENTINEL_FIELD(file, f_path.dentry), SENTINEL_FIELD(file, f_path.mnt),
			  root_dentry, root_mnt, SENTINEL_F_EXEPATH_TRUNC, SENTINEL_F_EXEPATH_DETACHED);
	e->exepath_len = cur->off - start;
	start = cur->off;
	sentinel_put_path(tail, cur, SENTINEL_FIELD(fs, pwd.dentry), SENTINEL_FIELD(fs, pwd.mnt),
			  root_dentry, root_mnt, SENTINEL_F_CWD_TRUNC, 0);
	e->cwd_len = cur->off - start;

	struct mm_struct *mm = SENTINEL_FIELD(task, mm);
	unsigned long arg_start = SENTINEL_FIELD(mm, arg_start);
	unsigned long arg_end = SENTINEL_FIELD(mm, arg_end);
	start = cur->off;
	if (arg_end > arg_start) {
		unsigned long len = arg_end - arg_start;
		u32 off = cur->off;
		if (len > SENTINEL_ARGS_MAX) {
			len = SENTINEL_ARGS_MAX;
			cur->flags |= SENTINEL_F_ARGS_TRUNC;
		}
		if (off >= SENTINEL_TAIL_MAX) {
			cur->flags |= SENTINEL_F_ARGS_TRUNC | SENTINEL_F_TAIL_FULL;
		} else {
			u32 size = (u32)len;
			asm volatile("%[size] &= 0x1fff" : [size] "+r"(size));
			if (size > SENTINEL_ARGS_MAX)
				size = SENTINEL_ARGS_MAX;
			if (bpf_probe_read_user(tail + (off & SENTINEL_TAIL_MASK), size, (void *)arg_start) == 0)
				cur->off = off + size;
		}
	}
	e->args_len = cur->off - start;
	start = cur->off;
	sentinel_put_env(tail, cur, SENTINEL_FIELD(mm, env_start), SENTINEL_FIELD(mm, env_end));
	e->env_len = cur->off - start;
	e->flags |= cur->flags;

	sentinel_submit(rec, sizeof(*e), cur->off);
	return 0;
}

static __always_inline int sentinel_exec_exit(struct sentinel_sys_exit_args *args)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct sentinel_enter *enter = snt_enter.lookup(&tid);
	if (!enter)
		return 0;
	struct sentinel_enter saved = *enter;
	snt_enter.delete(&tid);
	if (args->ret >= 0)
		return 0;
	char *rec = sentinel_record();
	if (!rec)
		return 0;
	struct sentinel_exec_failed *e = (struct sentinel_exec_failed *)rec;
	__builtin_memset(e, 0, sizeof(*e));
	sentinel_fill_header(&e->hdr, SENTINEL_OP_EXEC_FAILED,
			     (struct task_struct *)bpf_get_current_task());
	e->res = (s32)args->ret;
	e->dirfd = saved.dirfd;
	e->at_flags = (u32)saved.flags;
	u32 flags = saved.syscall == SENTINEL_SYSCALL_EXECVEAT ? SENTINEL_F_EXECVEAT : 0;

	struct sentinel_cursor *cur = sentinel_cursor_reset();
	if (!cur)
		return 0;
	char *tail = rec + sizeof(*e);
	/* read at exit: a page of the path not resident at entry would have faulted there */
	sentinel_put_ustr(tail, cur, (void *)saved.filename, SENTINEL_STR_MAX);
	u32 start = cur->off;
	e->filename_len = start;
	int i;
	for (i = 0; i < SENTINEL_FAILED_ARGS; i++) {
		u64 arg = 0;
		if (!saved.argv || bpf_probe_read_user(&arg, sizeof(arg), (void *)(saved.argv + i * 8)) != 0 || !arg)
			break;
		sentinel_put_ustr(tail, cur, (void *)arg, SENTINEL_ARG_MAX);
	}
	if (i == SENTINEL_FAILED_ARGS)
		flags |= SENTINEL_F_ARGS_TRUNC;
	e->args_len = cur->off - start;
	e->flags = flags | cur->flags;
	sentinel_submit(rec, sizeof(*e), cur->off);
	return 0;
}

int snt_execve_exit(struct sentinel_sys_exit_args *args)
{
	return sentinel_exec_exit(args);
}

int snt_execveat_exit(struct sentinel_sys_exit_args *args)
{
	return sentinel_exec_exit(args);
}

int snt_fork(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *parent = (struct task_struct *)ctx->args[0];
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	char *rec = sentinel_record();
	if (!rec)
		return 0;
	struct sentinel_clone *e = (struct sentinel_clone *)rec;
	__builtin_memset(e, 0, sizeof(*e));
	sentinel_fill_header(&e->hdr, SENTINEL_OP_CLONE, child);
	e->parent_pid = SENTINEL_FIELD(parent, tgid);
	e->parent_tid = SENTINEL_FIELD(parent, pid);
	e->parent_start_ns = sentinel_start_ns(parent);
	if (e->hdr.pid != e->hdr.tid)
		e->flags |= SENTINEL_F_CLONE_THREAD;
	struct pid *thread_pid = SENTINEL_FIELD(child, thread_pid);
	e->vpid = sentinel_pid_nr_at(thread_pid, SENTINEL_FIELD(thread_pid, level));
	u32 tid = e->parent_tid;
	struct sentinel_enter *enter = snt_enter.lookup(&tid);
	if (enter && enter->syscall >= SENTINEL_SYSCALL_CLONE && enter->syscall <= SENTINEL_SYSCALL_VFORK) {
		e->syscall = enter->syscall;
		e->clone_flags = enter->flags;
		e->flags |= SENTINEL_F_CLONE_FLAGS;
		snt_enter.delete(&tid);
	}
	sentinel_submit(rec, sizeof(*e), 0);
	return 0;
}

int snt_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	struct signal_struct *signal = SENTINEL_FIELD(task, signal);
	atomic_t live = SENTINEL_FIELD(signal, live);
	if (live.counter != 0)
		return 0;  /* other threads remain: not the end of the process */
	char *rec = sentinel_record();
	if (!rec)
		return 0;
	struct sentinel_exit *e = (struct sentinel_exit *)rec;
	__builtin_memset(e, 0, sizeof(*e));
	sentinel_fill_header(&e->hdr, SENTINEL_OP_EXIT, task);
	e->exit_code = SENTINEL_FIELD(task, exit_code);
	sentinel_submit(rec, sizeof(*e), 0);
	return 0;
}

static __always_inline int sentinel_cwd_changed(struct sentinel_sys_exit_args *args, u32 flags)
{
	char *rec = sentinel_record();
	if (!rec)
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct sentinel_chdir *e = (struct sentinel_chdir *)rec;
	__builtin_memset(e, 0, sizeof(*e));
	sentinel_fill_header(&e->hdr, SENTINEL_OP_CHDIR, task);
	e->res = (s32)args->ret;
	struct sentinel_cursor *cur = sentinel_cursor_reset();
	if (!cur)
		return 0;
	if (args->ret == 0) {
		struct fs_struct *fs = SENTINEL_FIELD(task, fs);
		sentinel_put_path(rec + sizeof(*e), cur, SENTINEL_FIELD(fs, pwd.dentry),
				  SENTINEL_FIELD(fs, pwd.mnt), SENTINEL_FIELD(fs, root.dentry),
				  SENTINEL_FIELD(fs, root.mnt), SENTINEL_F_CWD_TRUNC, 0);
	}
	e->cwd_len = cur->off;
	e->flags = flags | cur->flags;
	sentinel_submit(rec, sizeof(*e), cur->off);
	return 0;
}

int snt_chdir_exit(struct sentinel_sys_exit_args *args)
{
	return sentinel_cwd_changed(args, 0);
}

int snt_fchdir_exit(struct sentinel_sys_exit_args *args)
{
	return sentinel_cwd_changed(args, SENTINEL_F_FCHDIR);
}

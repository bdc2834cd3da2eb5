/* sentinel_events.h - the one kernel->user record layout of sentinel.
 *
 * Every record starts with struct sentinel_header; `op` says which body follows and
 * `size` how many bytes the record has in total (body + variable-length tail). Tails are
 * byte strings whose lengths are in the body, in the order the body lists them.
 * Paths walked from dentries are sent leaf first, one NUL-terminated component each
 * (userspace reverses them): that keeps the kernel side a simple bounded loop.
 *
 * The Python mirror is sentinel/events/abi.py; tests/events/test_abi_layout.py compiles
 * static asserts generated from it together with this header, so the two cannot drift.
 * Add a record type: a new opcode, a body struct, its mirror, nothing else changes.
 */
#ifndef SENTINEL_EVENTS_H
#define SENTINEL_EVENTS_H

#define SENTINEL_ABI_VERSION 1

enum sentinel_op {
	SENTINEL_OP_EXEC = 1,
	SENTINEL_OP_EXEC_FAILED = 2,
	SENTINEL_OP_CLONE = 3,
	SENTINEL_OP_EXIT = 4,
	SENTINEL_OP_CHDIR = 5,
	SENTINEL_OP_SYSCALL = 16,   /* a traced syscall at its exit, described by snt_sys_desc */
	SENTINEL_OP_COMPAT = 17,    /* a 32-bit (compat) syscall: invisible to syscalls:* */
	SENTINEL_OP_IO_URING = 18,  /* an io_uring submission: invisible to syscalls:* */
};
/* Size of the per-opcode lost-record counter array: opcodes must stay below it. */
#define SENTINEL_OP_SLOTS 64

/* The syscall that caused a record (exec, clone, chdir families). */
enum sentinel_syscall {
	SENTINEL_SYSCALL_NONE = 0,
	SENTINEL_SYSCALL_EXECVE = 1,
	SENTINEL_SYSCALL_EXECVEAT = 2,
	SENTINEL_SYSCALL_CLONE = 3,
	SENTINEL_SYSCALL_CLONE3 = 4,
	SENTINEL_SYSCALL_FORK = 5,
	SENTINEL_SYSCALL_VFORK = 6,
	SENTINEL_SYSCALL_CHDIR = 7,
	SENTINEL_SYSCALL_FCHDIR = 8,
};

/* Bounds of what the kernel copies. */
#define SENTINEL_COMM_LEN 16
#define SENTINEL_NAME_MAX 256      /* one path component, NUL included */
#define SENTINEL_PATH_DEPTH 48     /* dentry + mount steps of one path walk */
#define SENTINEL_STR_MAX 1024      /* filename / interpreter strings, NUL included */
#define SENTINEL_ARGS_MAX 4096     /* argv bytes of one exec */
#define SENTINEL_FAILED_ARGS 16    /* argv entries read for a failed exec */
#define SENTINEL_ARG_MAX 256       /* one argv entry of a failed exec */
#define SENTINEL_ENV_VARS 256      /* environment entries scanned */
#define SENTINEL_ENV_VAR_MAX 4096  /* one environment entry, NUL included */
#define SENTINEL_ENV_NAME_MAX 64   /* "NAME=" key of the env filter (LPM trie) */
/* Every variable-length tail is written at (offset & SENTINEL_TAIL_MASK) with at most
 * SENTINEL_TAIL_SLACK bytes per write, so the buffer is TAIL_MAX + TAIL_SLACK long. */
#define SENTINEL_TAIL_MAX 16384
#define SENTINEL_TAIL_MASK (SENTINEL_TAIL_MAX - 1)
#define SENTINEL_TAIL_SLACK 4096

/* sentinel_exec.flags / sentinel_exec_failed.flags / sentinel_chdir.flags */
#define SENTINEL_F_EXECVEAT        (1U << 0)  /* the exec came from execveat(2) */
#define SENTINEL_F_EXE_MEMFD       (1U << 1)  /* exe is a memfd_create() file */
#define SENTINEL_F_EXE_UPPER       (1U << 2)  /* exe is on an overlayfs upper layer */
#define SENTINEL_F_ARGS_TRUNC      (1U << 3)
#define SENTINEL_F_ENV_TRUNC       (1U << 4)
#define SENTINEL_F_EXEPATH_TRUNC   (1U << 5)  /* walk hit SENTINEL_PATH_DEPTH */
#define SENTINEL_F_CWD_TRUNC       (1U << 6)
#define SENTINEL_F_EXECFD          (1U << 7)  /* bprm->executable set (binfmt_misc 'O') */
#define SENTINEL_F_NO_ENTER        (1U << 8)  /* no syscall entry seen (kernel-started exec) */
#define SENTINEL_F_EXEPATH_DETACHED (1U << 9) /* walk ended on an unlinked/pseudo dentry */
#define SENTINEL_F_FCHDIR          (1U << 10)
#define SENTINEL_F_TAIL_FULL       (1U << 11) /* a tail was cut at SENTINEL_TAIL_MAX */
/* sentinel_clone.flags */
#define SENTINEL_F_CLONE_THREAD    (1U << 0)  /* the child is a thread of its parent's group */
#define SENTINEL_F_CLONE_FLAGS     (1U << 1)  /* clone_flags is known (syscall entry seen) */

struct sentinel_header {
	__u16 op;        /* enum sentinel_op */
	__u16 abi;       /* SENTINEL_ABI_VERSION */
	__u32 size;      /* bytes of the whole record */
	__u64 boot_ns;   /* bpf_ktime_get_boot_ns() */
	__u64 start_ns;  /* exec id: start_boottime of the group leader */
	__u64 cgroup_id; /* cgroup v2 id of the task */
	__u32 pid;       /* tgid */
	__u32 tid;
	__u32 cpu;
	__u32 _pad;
	char comm[SENTINEL_COMM_LEN];
};

/* A successful exec, read at sched_process_exec (the new image is in place).
 * Tail: filename, interp, exepath (components), cwd (components), args, env. */
struct sentinel_exec {
	struct sentinel_header hdr;
	__u32 ppid;
	__u32 old_pid;          /* thread that called exec (!= pid for a non-leader thread) */
	__u64 parent_start_ns;
	__u32 uid;
	__u32 gid;
	__u32 euid;
	__u32 egid;
	__u32 loginuid;
	__u32 vpid;
	__u32 pgid;
	__u32 vpgid;
	__u32 sid;
	__u32 tty;              /* controlling tty, kernel dev_t (major << 20 | minor); 0: none */
	__u64 cap_permitted;
	__u64 cap_effective;
	__u64 cap_inheritable;
	__u64 exe_ino;
	__u32 exe_dev;          /* kernel dev_t of the exe's superblock */
	__u32 exe_mode;
	__u32 exe_uid;
	__u32 exe_gid;
	__s64 exe_mtime_ns;
	__s64 exe_ctime_ns;
	__u32 flags;            /* SENTINEL_F_* */
	__u16 filename_len;
	__u16 interp_len;
	__u16 exepath_len;
	__u16 cwd_len;
	__u16 args_len;
	__u16 env_len;
	/* The task's css_set: the combination of its cgroups in every hierarchy (v1 and v2).
	 * Equal values mean equal /proc/<pid>/cgroup, so userspace reads that file once per
	 * value instead of once per exec. A cache key only: never stored or shown. */
	__u64 cgroups_key;
};

/* An exec that failed: syscall exit with ret < 0. Tail: filename, args. */
struct sentinel_exec_failed {
	struct sentinel_header hdr;
	__s32 res;
	__u32 flags;
	__s32 dirfd;
	__u32 at_flags;
	__u16 filename_len;
	__u16 args_len;
	__u32 _pad;
};

/* A new task (sched_process_fork). The header describes the CHILD. */
struct sentinel_clone {
	struct sentinel_header hdr;
	__u32 parent_pid;
	__u32 parent_tid;
	__u64 parent_start_ns;
	__u64 clone_flags;
	__u32 flags;            /* SENTINEL_F_CLONE_* */
	__u32 syscall;          /* enum sentinel_syscall */
	__u32 vpid;
	__u32 _pad;
};

/* The last thread of a process exited (signal->live reached 0). */
struct sentinel_exit {
	struct sentinel_header hdr;
	__s32 exit_code;        /* wait(2) status: code << 8 | core 0x80 | signal */
	__u32 _pad;
};

/* chdir/fchdir at syscall exit. Tail: cwd (components), only when res == 0. */
struct sentinel_chdir {
	struct sentinel_header hdr;
	__s32 res;
	__u32 flags;
	__u16 cwd_len;
	__u16 _pad[3];
};

/* ---- syscalls at exit (file, network, privilege events)
 * One generic record for every traced syscall: the raw arguments taken at entry, the result,
 * and what the exit program resolved from them. WHICH arguments are user strings, an fd or a
 * sockaddr is data: userspace fills snt_sys_desc[syscall number] with one
 * struct sentinel_sys_desc per traced syscall. */

/* sentinel_sys_desc.flags */
#define SENTINEL_DESC_OPEN          (1U << 0)  /* open family: the open filter applies */
#define SENTINEL_DESC_FD_RES        (1U << 1)  /* the fd to resolve is the result (open, accept, dup) */
#define SENTINEL_DESC_STATE_BEFORE  (1U << 2)  /* read the socket's state at entry (connected before) */
#define SENTINEL_DESC_NEED_ADDR     (1U << 3)  /* nothing to report without a sockaddr (sendto/sendmsg) */
#define SENTINEL_DESC_MSGHDR        (1U << 4)  /* addr_arg is a struct msghdr * (sendmsg) */
#define SENTINEL_DESC_OTHER_PID     (1U << 5)  /* pid_arg names a target: drop when it is the caller */
#define SENTINEL_DESC_BPF_ATTR      (1U << 6)  /* bpf(): read the prog type / name of BPF_PROG_LOAD */
#define SENTINEL_DESC_OPEN_HOW      (1U << 7)  /* openat2: args[2..4] become open_how's flags, mode, resolve */
#define SENTINEL_DESC_ARGS_AT_EXIT  (1U << 8)  /* no entry program: arguments from the saved user
						  * registers at exit (x86_64; the open family, whose
						  * rate makes an entry map update too dear) */
#define SENTINEL_DESC_CAPSET        (1U << 9)  /* capset: args[2..4] become the effective, permitted and
						  * inheritable sets read from the user's cap_user_data_t */
#define SENTINEL_DESC_PIDFD         (1U << 10) /* the resolved fd is a pidfd: target_pid is its process */

/* Argument numbers in a desc are index + 1 (0: none). */
struct sentinel_sys_desc {
	__u8 str_args[3];   /* user strings to copy (paths, names) */
	__u8 fd_arg;        /* an fd argument to resolve (ignored with SENTINEL_DESC_FD_RES) */
	__u8 addr_arg;      /* a struct sockaddr * (or msghdr *) argument */
	__u8 addr_len_arg;  /* its length argument (a value) */
	__u8 dirfd_arg;     /* the dirfd of a relative path (0: the cwd) */
	__u8 pid_arg;       /* a target pid (kill family) */
	__u32 flags;        /* SENTINEL_DESC_* */
};

/* sentinel_syscall.flags */
#define SENTINEL_F_SYS_PATH_TRUNC     (1U << 0)  /* the fd's path walk hit SENTINEL_PATH_DEPTH */
#define SENTINEL_F_SYS_PATH_DETACHED  (1U << 1)  /* it ended on an unlinked or pseudo dentry */
#define SENTINEL_F_SYS_BASE_TRUNC     (1U << 2)
#define SENTINEL_F_SYS_CONNECTED      (1U << 3)  /* the socket had a peer before the syscall */
#define SENTINEL_F_SYS_NAME_CHANGED   (1U << 4)  /* a sendto/sendmsg addressed a new peer */
#define SENTINEL_F_SYS_FD             (1U << 5)  /* fd_* fields describe an open file */
#define SENTINEL_F_SYS_SOCK           (1U << 6)  /* sk_* fields describe its socket */
#define SENTINEL_F_SYS_LISTENING      (1U << 7)  /* the socket is (was) listening: server side */
/* SENTINEL_F_TAIL_FULL (bit 11) is shared with the process records */

#define SENTINEL_SOCKADDR_MAX 128  /* sockaddr bytes copied from an argument */
#define SENTINEL_BPF_NAME_LEN 16   /* BPF_OBJ_NAME_LEN */
#define SENTINEL_OPEN_PREFIX_MAX 256  /* bytes of a path the open filter compares */
#define SENTINEL_OPEN_FILTER_ENTRIES 1024  /* prefixes, comms and file names the open filter holds */
#define SENTINEL_OPEN_BASENAME_MAX 64  /* bytes of a file name the open filter compares, NUL included */
#define SENTINEL_OPEN_CGROUP_ENTRIES 4096  /* cgroups whose class the open filter knows */
/* bytes of a path's first component the open filter's quick check compares (NUL-padded; a
 * dentry's inline name area, DNAME_INLINE_LEN, is at most this long) */
#define SENTINEL_OPEN_FIRST_COMPONENT_MAX 40
/* bits of a uid's value in the open filter's uid set: which selectors allow it */
#define SENTINEL_OPEN_SEL_GLOBAL 1    /* every open */
#define SENTINEL_OPEN_SEL_ANY_PATH 2  /* the opens that pass whatever their path */
/* class of a cgroup in the open filter's cgroup map */
#define SENTINEL_CGROUP_HOST 1
#define SENTINEL_CGROUP_CONTAINER 2

/* A syscall at exit. Tail, in this order: path (the fd's resolved path, root first, no
 * NUL), unix (a unix socket's struct sockaddr_un: ours, else the peer's), str0, str1, str2
 * (user strings, NUL-terminated), base (for a failed relative path: the cwd or dirfd's path, root
 * first), addr (the sockaddr argument's bytes). */
struct sentinel_sys_event {
	struct sentinel_header hdr;
	__s64 res;
	__u64 args[6];
	__u32 nr;           /* native syscall number */
	__u32 flags;        /* SENTINEL_F_SYS_* */
	__s32 fd;           /* the fd resolved (argument or result), -1: none */
	__u32 fd_mode;      /* inode i_mode */
	__u64 fd_ino;
	__u32 fd_dev;       /* kernel dev_t of the superblock */
	__u32 fd_fmode;     /* file->f_mode (FMODE_CREATED) */
	__u32 fd_oflags;    /* file->f_flags */
	__u32 bpf_prog_type;
	__u16 sock_family;
	__u16 sock_type;
	__u16 sock_protocol;
	__u16 lport;        /* host order */
	__u16 rport;        /* host order */
	__u8 sock_state;      /* at exit */
	__u8 _pad1;
	__u8 laddr[16];     /* IPv4 in the first 4 bytes */
	__u8 raddr[16];
	char bpf_prog_name[SENTINEL_BPF_NAME_LEN];
	__u16 str0_len;
	__u16 str1_len;
	__u16 path_len;
	__u16 base_len;
	__u16 addr_len;
	__u16 unix_len;
	__u16 str2_len;
	__u16 _pad2[3];
	__s32 target_pid;   /* SENTINEL_DESC_PIDFD: the pidfd's process in the caller's pid namespace, 0: unknown */
	__u32 _pad3;
};

/* A syscall made in 32-bit compat mode (int 0x80, or a 32-bit process), at raw sys_enter. */
struct sentinel_compat {
	struct sentinel_header hdr;
	__u64 args[6];
	__u32 nr;           /* the i386 syscall number */
	__u32 _pad;
};

/* An io_uring request submitted (tracepoint io_uring:io_uring_submit_req). */
struct sentinel_io_uring {
	struct sentinel_header hdr;
	__u64 user_data;
	__u64 req_flags;
	__u32 opcode;       /* IORING_OP_* */
	__u32 sq_thread;    /* submitted by the SQPOLL kernel thread */
};

#endif /* SENTINEL_EVENTS_H */

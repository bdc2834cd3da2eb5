/* syscalls.bpf.c - file, network and privilege syscalls, reported at their exit.
 *
 * One entry program and one exit program serve every traced syscall: the entry keeps the
 * raw arguments per thread, the exit reads what is final then (result, user strings, the
 * file or socket behind an fd). What to read for each syscall number comes from
 * snt_sys_desc, filled by userspace from sentinel.events.syscalls (data, not C text).
 *
 * fds are resolved in the kernel at the moment of the event (task->files->fdt->fd[n]), paths
 * by a bounded dentry/mount walk sent root first, so the open filter can match them against
 * an LPM trie of path prefixes with one lookup.
 */
#include <linux/fdtable.h>
#include <linux/net.h>
#include <net/sock.h>
#include <net/af_unix.h>

#define SENTINEL_SYS_NR_MAX 512
#define SENTINEL_S_IFMT 00170000
#define SENTINEL_S_IFSOCK 0140000
#define SENTINEL_AF_UNIX 1
#define SENTINEL_AF_INET 2
#define SENTINEL_AF_INET6 10
#define SENTINEL_TCP_ESTABLISHED 1
#define SENTINEL_TCP_LISTEN 10
#define SENTINEL_BPF_PROG_LOAD 5
#define SENTINEL_PREFIX_MAX SENTINEL_OPEN_PREFIX_MAX
#define SENTINEL_CAP_VERSION_1 0x19980330
#define SENTINEL_PID_NS_LEVELS 32  /* MAX_PID_NS_LEVEL */
#define SENTINEL_INLINE_NAME SENTINEL_OPEN_FIRST_COMPONENT_MAX  /* inline name bytes a dentry read takes */
#define SENTINEL_O_ACCMODE 3
#define SENTINEL_O_PATH 010000000
/* Open verdicts of the filter's cheap part */
#define SENTINEL_OPEN_DROP 0
#define SENTINEL_OPEN_PASS 1
#define SENTINEL_OPEN_CHECK_PATH 2
#define SENTINEL_OPEN_CHECK_DOTDOT 3  /* passes with "../" in the path as passed, else CHECK_PATH */
/* The members of struct file and struct dentry the exit program reads, as one read each from
 * the start of the object (or of d_parent): their ends, computed from the kernel's layout. */
#define SENTINEL_END(type, member) (__builtin_offsetof(type, member) + sizeof(((type *)0)->member))
#define SENTINEL_MAX(a, b) ((a) > (b) ? (a) : (b))
#define SENTINEL_FILE_HEAD                                                                   \
	SENTINEL_MAX(SENTINEL_MAX(SENTINEL_MAX(SENTINEL_END(struct file, f_path), SENTINEL_END(struct file, f_inode)), \
				  SENTINEL_MAX(SENTINEL_END(struct file, f_flags), SENTINEL_END(struct file, f_mode))), \
		     SENTINEL_END(struct file, private_data))
#ifndef SENTINEL_FMODE_CREATED
#define SENTINEL_FMODE_CREATED 0x100000  /* FMODE_CREATED: a #define, not in BTF */
#endif

struct sentinel_sys_enter {
	u64 args[8];    /* six syscall arguments; two zeros so a masked index stays inside */
	u32 nr;
	u32 connected;  /* SENTINEL_DESC_STATE_BEFORE: the socket had a peer at entry */
};
/* per-CPU LRU lists (the table is shared): no global lock on the hot path of every syscall */
BPF_F_TABLE("lru_hash", u32, struct sentinel_sys_enter, snt_sys_args, 16384, BPF_F_NO_COMMON_LRU);
BPF_ARRAY(snt_sys_desc, struct sentinel_sys_desc, SENTINEL_SYS_NR_MAX);

/* The open filter (sentinel.sensor fills it from the rules' Interest). An open passes when it
 * satisfies the selectors AND (the path part OR the any-path selectors alt_*). */
struct sentinel_open_cfg {
	u32 enabled;        /* 0: every open reaches userspace */
	u32 pass_created;   /* opens that created their file pass */
	u32 has_comms;      /* snt_open_comms is not empty */
	u32 has_basenames;  /* snt_open_basenames is not empty */
	u32 any_path;       /* the path part passes every path */
	u32 accmodes;       /* bit (f_flags & O_ACCMODE) set: opens with that access mode pass */
	u32 file_types;     /* bit (i_mode >> 12) set: opens of that inode type pass */
	u32 uid_bits;       /* SENTINEL_OPEN_SEL_*: the caller's uid must carry that bit in snt_open_uids */
	u32 drop_class;     /* opens from a cgroup of this class in snt_open_cgroups are dropped (0: none) */
	u32 alt_enabled;    /* opens that satisfy the alt_* selectors pass whatever their path */
	u32 alt_accmodes;
	u32 alt_file_types;
	u32 alt_drop_class;
	u32 alt_dotdot_accmodes;  /* opens of only these modes pass by alt_* only with "../" in the path as passed */
	u32 first_check;    /* every prefix is "/<component>/...": snt_open_first lists those components */
};
BPF_ARRAY(snt_open_cfg, struct sentinel_open_cfg, 1);
struct sentinel_prefix_key {
	u32 prefixlen;
	char data[SENTINEL_PREFIX_MAX];
};
/* The value: the access-mode bits (1 << (f_flags & O_ACCMODE)) of the opens this prefix
 * passes, those of every shorter prefix included (the trie answers with the longest). */
BPF_LPM_TRIE(snt_open_prefixes, struct sentinel_prefix_key, u8, SENTINEL_OPEN_FILTER_ENTRIES);
struct sentinel_comm_key {
	char comm[SENTINEL_COMM_LEN];
};
BPF_HASH(snt_open_comms, struct sentinel_comm_key, u8, SENTINEL_OPEN_FILTER_ENTRIES);
/* A trie key under construction: twice the key's bytes, so that a bounded write at any
 * offset below SENTINEL_PREFIX_MAX stays inside (the trie reads only the key's size). */
struct sentinel_prefix_scratch {
	u32 prefixlen;
	char data[2 * SENTINEL_PREFIX_MAX];
};
BPF_PERCPU_ARRAY(snt_prefix_buf, struct sentinel_prefix_scratch, 1);
struct sentinel_basename_key {
	char name[SENTINEL_OPEN_BASENAME_MAX];
};
BPF_HASH(snt_open_basenames, struct sentinel_basename_key, u8, SENTINEL_OPEN_FILTER_ENTRIES);

/* The first components of the prefixes, NUL-padded: a path whose first component is not one
 * cannot start with a prefix, which saves building the trie key. */
struct sentinel_first_key {
	u64 words[SENTINEL_INLINE_NAME / 8];
};
BPF_HASH(snt_open_first, struct sentinel_first_key, u8, SENTINEL_OPEN_FILTER_ENTRIES);
BPF_PERCPU_ARRAY(snt_first_buf, struct sentinel_first_key, 1);

/* The real uids the selectors allow: value bits SENTINEL_OPEN_SEL_GLOBAL / SENTINEL_OPEN_SEL_ANY_PATH. */
BPF_HASH(snt_open_uids, u32, u8, SENTINEL_OPEN_FILTER_ENTRIES);
/* v2 cgroup ids whose class is certain: SENTINEL_CGROUP_HOST / SENTINEL_CGROUP_CONTAINER.
 * An id not listed (a cgroup created since the load) is of no class: never dropped. */
BPF_HASH(snt_open_cgroups, u64, u8, SENTINEL_OPEN_CGROUP_ENTRIES);

/* The caller's and a pidfd's struct upid at the caller's namespace level (off the full stack). */
struct sentinel_pid_pair {
	struct upid own;
	struct upid target;
};
BPF_PERCPU_ARRAY(snt_pid_scratch, struct sentinel_pid_pair, 1);

/* Opens seen by the exit program and opens it sent on (index 0 and 1), for the cost note. */
BPF_PERCPU_ARRAY(snt_open_stats, u64, 2);

/* The last peer a socket sent to without being connected: fd.name_changed. */
BPF_TABLE("lru_hash", u64, u64, snt_sock_peer, 16384);

/* What the path walk reads of a dentry, in one read from d_parent: d_parent, d_name,
 * d_inode and the inline name bytes after it (d_iname, d_shortname), where the layout has
 * them in that order (SENTINEL_DENTRY_INLINE). */
struct sentinel_dentry_head {
	struct dentry *parent;
	struct qstr name;
	struct inode *inode;
	u64 inline_name[SENTINEL_INLINE_NAME / 8];
};
#define SENTINEL_DENTRY_INLINE                                                                          \
	(__builtin_offsetof(struct dentry, d_name) == __builtin_offsetof(struct dentry, d_parent) + 8 &&     \
	 __builtin_offsetof(struct dentry, d_inode) == __builtin_offsetof(struct dentry, d_name) + 16 &&     \
	 __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
/* Dentry names of one path, leaf first, before they are written root first. */
struct sentinel_walk {
	u64 names[SENTINEL_PATH_DEPTH];
	u32 lens[SENTINEL_PATH_DEPTH];
	u32 count;
	u32 flags;
	struct sentinel_dentry_head head;  /* of the last dentry read: the path's first component */
	u32 first_inline;                  /* head.inline_name holds that component's name */
	u32 _pad;
};
BPF_PERCPU_ARRAY(snt_walks, struct sentinel_walk, 1);

/* The head of the struct file behind an fd (SENTINEL_FILE_HEAD bytes), read in one helper
 * call instead of one per member (each bpf_probe_read_kernel costs tens of ns). */
BPF_PERCPU_ARRAY(snt_file_copy, struct file, 1);

/* Whether the walked path's last component is one of the configured file names. */
static __always_inline int sentinel_basename_listed(struct sentinel_walk *w)
{
	if (w->count == 0)
		return 0;
	u32 len = w->lens[0];
	if (len >= SENTINEL_OPEN_BASENAME_MAX)
		return 0;  /* longer than any configured name */
	struct sentinel_basename_key key = {};
	bpf_probe_read_kernel(key.name, len & (SENTINEL_OPEN_BASENAME_MAX - 1), (void *)w->names[0]);
	return snt_open_basenames.lookup(&key) != 0;
}

/* The file behind fd `fd` of the current task (task->files->fdt->fd[fd]). The task's own
 * objects are read through its BTF pointer (plain loads, no helper call: the verifier turns
 * them into fault-tolerant loads); only the fd array, which BTF does not type, needs a helper. */
static __always_inline struct file *sentinel_fd_file(s64 fd)
{
	if (fd < 0 || fd > 0x7fffffff)
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	struct fdtable *fdt = task->files->fdt;
	if ((u64)fd >= fdt->max_fds)
		return 0;
	struct file **fds = fdt->fd;
	struct file *file = 0;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	return file;
}

/* Collect the names from `dentry` up to the task's root (crossing mounts), leaf first. */
static __always_inline struct sentinel_walk *sentinel_walk_path(struct dentry *dentry, struct vfsmount *vfsmnt,
								struct dentry *root_dentry, struct vfsmount *root_mnt,
								u32 trunc_flag, u32 detached_flag)
{
	u32 zero = 0;
	struct sentinel_walk *w = snt_walks.lookup(&zero);
	if (!w)
		return 0;
	w->count = 0;
	w->flags = 0;
	w->first_inline = 0;
#ifdef SENTINEL_CAN_CROSS_MOUNTS
	char *mnt = (char *)vfsmnt - SENTINEL_MOUNT_OFF_MNT;
#endif
	struct dentry *mnt_root = SENTINEL_FIELD(vfsmnt, mnt_root);
	int i;
	for (i = 0; i < SENTINEL_PATH_DEPTH; i++) {
		if (!dentry)
			return w;
		if (dentry == root_dentry && vfsmnt == root_mnt)
			return w;
		if (dentry == mnt_root) {
#ifdef SENTINEL_CAN_CROSS_MOUNTS
			char *parent_mnt = 0;
			bpf_probe_read_kernel(&parent_mnt, sizeof(parent_mnt), mnt + SENTINEL_MOUNT_OFF_PARENT);
			if (parent_mnt == mnt || !parent_mnt)
				return w;
			bpf_probe_read_kernel(&dentry, sizeof(dentry), mnt + SENTINEL_MOUNT_OFF_MOUNTPOINT);
			mnt = parent_mnt;
			vfsmnt = (struct vfsmount *)(parent_mnt + SENTINEL_MOUNT_OFF_MNT);
			mnt_root = SENTINEL_FIELD(vfsmnt, mnt_root);
			continue;
#else
			w->flags |= trunc_flag;
			return w;
#endif
		}
		u32 n = w->count;
		if (n >= SENTINEL_PATH_DEPTH)
			break;
		struct sentinel_dentry_head *head = &w->head;
		w->first_inline = 0;
		if (SENTINEL_DENTRY_INLINE) {
			if (bpf_probe_read_kernel(head, sizeof(*head), &dentry->d_parent) != 0)
				break;
			w->first_inline = (u64)head->name.name == (u64)dentry + __builtin_offsetof(struct dentry, d_inode) + 8;
		} else if (bpf_probe_read_kernel(&head->parent, sizeof(head->parent), &dentry->d_parent) != 0 ||
			   bpf_probe_read_kernel(&head->name, sizeof(head->name), (void *)&dentry->d_name) != 0) {
			break;
		}
		w->names[n] = (u64)head->name.name;
		w->lens[n] = head->name.len;
		w->count = n + 1;
		struct dentry *parent = head->parent;
		if (parent == dentry) {
			w->flags |= detached_flag;
			return w;
		}
		dentry = parent;
	}
	w->flags |= trunc_flag;
	return w;
}

/* `offset & SENTINEL_TAIL_MASK`, masked in asm: the compiler would drop a mask that an earlier
 * bound check implies, and older verifiers (6.1) do not carry that bound through 32-bit
 * arithmetic, so they refuse the write. */
_Static_assert(SENTINEL_TAIL_MASK == 0x3fff, "the asm mask below is SENTINEL_TAIL_MASK");
static __always_inline u64 sentinel_tail_at(u64 offset)
{
	asm volatile("%[offset] &= 0x3fff" : [offset] "+r"(offset));
	return offset;
}

/* Write the walked path root first ("/a/b/c", no NUL) at the cursor. */
static __always_inline void sentinel_put_walk(char *tail, struct sentinel_cursor *cur, struct sentinel_walk *w)
{
	u32 pos = cur->off;
	u32 count = w->count;
	cur->flags |= w->flags;
	if (pos >= SENTINEL_TAIL_MAX) {
		cur->flags |= SENTINEL_F_TAIL_FULL;
		return;
	}
	if (count == 0) {
		tail[pos & SENTINEL_TAIL_MASK] = '/';
		cur->off = pos + 1;
		return;
	}
	int j;
	for (j = 0; j < SENTINEL_PATH_DEPTH; j++) {
		SENTINEL_KEEP_COUNTER(j);
		if (j >= count)
			break;
		if (pos >= SENTINEL_TAIL_MAX) {
			cur->flags |= SENTINEL_F_TAIL_FULL;
			break;
		}
		u32 k = count - 1 - j;
		if (k >= SENTINEL_PATH_DEPTH)
			break;
		tail[sentinel_tail_at(pos)] = '/';
		pos++;
		u32 len = w->lens[k] & (SENTINEL_NAME_MAX - 1);
		bpf_probe_read_kernel(tail + sentinel_tail_at(pos), len, (void *)w->names[k]);
		pos += len;
	}
	cur->off = pos;
}

/* Whether the path at tail[start, start+len) starts with a configured prefix. */
static __always_inline int sentinel_prefix_match(const char *text, u32 len)
{
	u32 zero = 0;
	struct sentinel_prefix_scratch *key = snt_prefix_buf.lookup(&zero);
	if (!key)
		return 1;  /* cannot check: over-approximate */
	/* no clearing: the trie compares only the first prefixlen bits of the key */
	u64 size = len;
	if (size > SENTINEL_PREFIX_MAX - 1)
		size = SENTINEL_PREFIX_MAX - 1;  /* longer paths compare on their first bytes */
	/* the mask in asm so that the verifier sees it on the register passed to the helper */
	asm volatile("%[size] &= 0xff" : [size] "+r"(size));
	bpf_probe_read_kernel(key->data, size, text);
	key->prefixlen = size * 8;
	return snt_open_prefixes.lookup((struct sentinel_prefix_key *)key) != 0;
}

/* Whether the walked path's first component may begin a prefix: 0 only when its name, read
 * with the last dentry of the walk, is certainly not among the prefixes' first components. */
static __always_inline int sentinel_first_listed(struct sentinel_walk *w)
{
	u32 last = w->count - 1;
	if (!w->first_inline || last >= SENTINEL_PATH_DEPTH)
		return 1;  /* no component (the path is "/"), or its name is not at hand */
	u32 len = w->lens[last];
	if (len >= SENTINEL_INLINE_NAME)
		return 1;
	u32 zero = 0;
	struct sentinel_first_key *key = snt_first_buf.lookup(&zero);
	if (!key)
		return 1;
	int i;
	for (i = 0; i < SENTINEL_INLINE_NAME / 8; i++) {
		s32 left = (s32)len - 8 * i;  /* name bytes in this word */
		u64 mask = left >= 8 ? ~0ULL : left <= 0 ? 0 : (1ULL << (8 * left)) - 1;
		key->words[i] = w->head.inline_name[i] & mask;
	}
	return snt_open_first.lookup(key) != 0;
}

/* The access-mode bits of the longest configured prefix the walked path, root first, starts
 * with (0: none): the trie key is written straight from the dentry names (the record is
 * built only for opens that pass). */
static __always_inline u32 sentinel_walk_prefix_match(struct sentinel_walk *w)
{
	u32 zero = 0;
	struct sentinel_prefix_scratch *key = snt_prefix_buf.lookup(&zero);
	if (!key)
		return 0xf;  /* cannot check: over-approximate */
	u32 count = w->count;
	u32 pos = 0;
	if (count == 0) {
		key->data[0] = '/';
		pos = 1;
	}
	int j;
	for (j = 0; j < SENTINEL_PATH_DEPTH; j++) {
		SENTINEL_KEEP_COUNTER(j);
		if (j >= count || pos >= SENTINEL_PREFIX_MAX - 1)
			break;
		u32 k = count - 1 - j;
		if (k >= SENTINEL_PATH_DEPTH)
			break;
		/* offsets and sizes masked in asm, so that the verifier sees the bounds the
		 * compiler would otherwise drop as implied by the loop condition */
		u64 at = pos;
		asm volatile("%[at] &= 0xff" : [at] "+r"(at));
		key->data[at] = '/';
		at = pos + 1;
		asm volatile("%[at] &= 0xff" : [at] "+r"(at));
		u64 len = w->lens[k];
		if (len > SENTINEL_PREFIX_MAX - 1)
			len = SENTINEL_PREFIX_MAX - 1;
		asm volatile("%[len] &= 0xff" : [len] "+r"(len));
		bpf_probe_read_kernel(key->data + at, len, (void *)w->names[k]);
		pos += 1 + len;
	}
	if (pos > SENTINEL_PREFIX_MAX - 1)
		pos = SENTINEL_PREFIX_MAX - 1;  /* longer paths compare on their first bytes */
	key->prefixlen = pos * 8;
	u8 *accmodes = snt_open_prefixes.lookup((struct sentinel_prefix_key *)key);
	return accmodes ? *accmodes : 0;
}

/* Whether "../" may be in `path`, the path a caller passed to an open: read into the trie
 * key's scratch and scanned eight bytes at a time, at a stride of six so that every
 * three-byte run lies whole in one word. A path longer than the scan, or one that cannot be
 * read, counts as having it. No branch on the bytes: the verifier walks the loop once
 * whatever the path. */
#define SENTINEL_DOTDOT_SCAN_MAX 256
#define SENTINEL_BYTES(b) (0x0101010101010101ULL * (b))
static __always_inline u64 sentinel_bytes_equal(u64 word, u8 b)
{
	/* 0x80 in each byte of word equal to b, 0 elsewhere (exact: no borrow between bytes) */
	u64 x = word ^ SENTINEL_BYTES(b);
	u64 low = SENTINEL_BYTES(0x7f);
	return ~(((x & low) + low) | x | low);
}

static __always_inline int sentinel_path_has_dotdot(u64 path)
{
	u32 zero = 0;
	struct sentinel_prefix_scratch *buf = snt_prefix_buf.lookup(&zero);
	if (!buf || !path)
		return 1;
	long len = bpf_probe_read_user_str(buf->data, SENTINEL_DOTDOT_SCAN_MAX + 1, (void *)path);
	if (len <= 0 || len > SENTINEL_DOTDOT_SCAN_MAX)
		return 1;
	u64 found = 0;
	u32 at;
	for (at = 0; at < SENTINEL_DOTDOT_SCAN_MAX; at += 6) {
		SENTINEL_KEEP_COUNTER(at);
		if (at >= len)
			break;
		u64 word = *(u64 *)(buf->data + (at & (SENTINEL_DOTDOT_SCAN_MAX - 1)));
		/* keep only the path's bytes (left of them in this word), without a branch */
		u32 left = len - at;
		u32 short_word = (left - 8) >> 31;
		u64 cut = (short_word * (8 - left) * 8) & 63;
		word = (word << cut) >> cut;
		u64 dots = sentinel_bytes_equal(word, '.');
		found |= dots & (dots >> 8) & (sentinel_bytes_equal(word, '/') >> 16);
	}
	return found != 0;
}

/* The open filter's cheap part, before any path walk: the selectors (access mode, inode
 * type, uid, cgroup class), then whether the any-path selectors let it through. */
/* The open's access-mode bit: a failed open, or an O_PATH one (the kernel clears its access
 * mode), is of any access mode. */
static __always_inline u32 sentinel_open_acc_bit(int has_file, u32 f_flags)
{
	return !has_file || (f_flags & SENTINEL_O_PATH) ? 0xf : 1U << (f_flags & SENTINEL_O_ACCMODE);
}

static __always_inline int sentinel_open_selectors(struct sentinel_open_cfg *cfg, int has_file, u32 f_flags,
						   struct inode *inode)
{
	u32 acc_bit = sentinel_open_acc_bit(has_file, f_flags);
	u32 type_bit = 0xffff;
	if (has_file && cfg->file_types != 0xffff) {
		u16 mode = SENTINEL_FIELD(inode, i_mode);
		type_bit = 1U << ((mode >> 12) & 15);
	}
	if (!(cfg->accmodes & acc_bit) || !(cfg->file_types & type_bit))
		return SENTINEL_OPEN_DROP;
	u32 uid_bits = 0;
	if (cfg->uid_bits) {
		struct task_struct *task_btf = (struct task_struct *)bpf_get_current_task_btf();
		u32 uid = task_btf->cred->uid.val;
		u8 *listed = snt_open_uids.lookup(&uid);
		uid_bits = listed ? *listed : 0;
		if ((cfg->uid_bits & SENTINEL_OPEN_SEL_GLOBAL) && !(uid_bits & SENTINEL_OPEN_SEL_GLOBAL))
			return SENTINEL_OPEN_DROP;
	}
	u32 class = 0;
	if (cfg->drop_class || cfg->alt_drop_class) {
		u64 cgroup_id = bpf_get_current_cgroup_id();
		u8 *known = snt_open_cgroups.lookup(&cgroup_id);
		class = known ? *known : 0;
		if (class && class == cfg->drop_class)
			return SENTINEL_OPEN_DROP;
	}
	if (cfg->any_path)
		return SENTINEL_OPEN_PASS;
	if (cfg->alt_enabled && (cfg->alt_accmodes & acc_bit) && (cfg->alt_file_types & type_bit) &&
	    (!(cfg->uid_bits & SENTINEL_OPEN_SEL_ANY_PATH) || (uid_bits & SENTINEL_OPEN_SEL_ANY_PATH)) &&
	    !(class && class == cfg->alt_drop_class))
		return acc_bit & ~cfg->alt_dotdot_accmodes ? SENTINEL_OPEN_PASS : SENTINEL_OPEN_CHECK_DOTDOT;
	return SENTINEL_OPEN_CHECK_PATH;
}

static __always_inline int sentinel_comm_listed(void)
{
	struct sentinel_comm_key key = {};
	bpf_get_current_comm(key.comm, sizeof(key.comm));
	return snt_open_comms.lookup(&key) != 0;
}

static __always_inline u16 sentinel_ntohs(u16 v)
{
	return (v >> 8) | (v << 8);
}

/* Fill the socket part of the record from `file` (a socket inode). */
static __always_inline void sentinel_socket(struct sentinel_sys_event *e, struct file *file, char *tail,
					    struct sentinel_cursor *cur)
{
	struct socket *sock = SENTINEL_FIELD(file, private_data);
	struct sock *sk = SENTINEL_FIELD(sock, sk);
	if (!sk)
		return;
	e->flags |= SENTINEL_F_SYS_SOCK;
	e->sock_type = (u16)SENTINEL_FIELD(sock, type);
	e->sock_family = SENTINEL_FIELD(sk, __sk_common.skc_family);
	e->sock_protocol = SENTINEL_FIELD(sk, sk_protocol);
	bpf_probe_read_kernel(&e->sock_state, 1, (void *)&sk->__sk_common.skc_state);
	if (e->sock_state == SENTINEL_TCP_LISTEN)
		e->flags |= SENTINEL_F_SYS_LISTENING;
	if (e->sock_family == SENTINEL_AF_INET) {
		e->lport = SENTINEL_FIELD(sk, __sk_common.skc_num);
		e->rport = sentinel_ntohs(SENTINEL_FIELD(sk, __sk_common.skc_dport));
		bpf_probe_read_kernel(e->laddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_probe_read_kernel(e->raddr, 4, &sk->__sk_common.skc_daddr);
	} else if (e->sock_family == SENTINEL_AF_INET6) {
		e->lport = SENTINEL_FIELD(sk, __sk_common.skc_num);
		e->rport = sentinel_ntohs(SENTINEL_FIELD(sk, __sk_common.skc_dport));
		bpf_probe_read_kernel(e->laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_probe_read_kernel(e->raddr, 16, &sk->__sk_common.skc_v6_daddr);
	} else if (e->sock_family == SENTINEL_AF_UNIX) {
		/* our bound address, else the peer's */
		struct unix_sock *unix_sk = (struct unix_sock *)sk;
		struct unix_address *addr = SENTINEL_FIELD(unix_sk, addr);
		if (!addr) {
			struct unix_sock *peer = (struct unix_sock *)SENTINEL_FIELD(unix_sk, peer);
			if (peer)
				addr = SENTINEL_FIELD(peer, addr);
		}
		if (addr) {
			u32 off = cur->off;
			if (off >= SENTINEL_TAIL_MAX) {
				cur->flags |= SENTINEL_F_TAIL_FULL;
				return;
			}
			u32 len = SENTINEL_FIELD(addr, len);
			if (len > SENTINEL_SOCKADDR_MAX)
				len = SENTINEL_SOCKADDR_MAX;
			bpf_probe_read_kernel(tail + (off & SENTINEL_TAIL_MASK), len & (2 * SENTINEL_SOCKADDR_MAX - 1),
					      &addr->name[0]);
			cur->off = off + len;
			e->unix_len = len;
		}
	}
}

static __always_inline struct sock *sentinel_fd_sock(struct task_struct *task, s64 fd)
{
	struct file *file = sentinel_fd_file(fd);
	struct inode *inode = SENTINEL_FIELD(file, f_inode);
	u32 mode = SENTINEL_FIELD(inode, i_mode);
	if ((mode & SENTINEL_S_IFMT) != SENTINEL_S_IFSOCK)
		return 0;
	struct socket *sock = SENTINEL_FIELD(file, private_data);
	return SENTINEL_FIELD(sock, sk);
}

int snt_sys_enter(struct sentinel_sys_enter_args *args)
{
	u32 nr = (u32)args->syscall_nr;
	struct sentinel_sys_desc *desc = snt_sys_desc.lookup(&nr);
	if (!desc)
		return 0;
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct sentinel_sys_enter enter = {};
	enter.nr = nr;
	/* not a direct context read: a syscall with fewer arguments has a shorter record, and
	 * attaching a program that reads past it is refused (EPERM) */
	bpf_probe_read_kernel(enter.args, sizeof(args->args), args->args);
	if (desc->flags & SENTINEL_DESC_STATE_BEFORE && desc->fd_arg) {
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();
		struct sock *sk = sentinel_fd_sock(task, (s64)(s32)enter.args[(desc->fd_arg - 1) & 7]);
		if (sk) {
			u8 state = 0;
			bpf_probe_read_kernel(&state, 1, (void *)&sk->__sk_common.skc_state);
			enter.connected = state == SENTINEL_TCP_ESTABLISHED;
		}
	}
	snt_sys_args.update(&tid, &enter);
	return 0;
}

/* sched:sched_process_exit, for every thread: an entry left by a syscall the thread never
 * returned from (killed inside it) goes with the thread instead of waiting for LRU eviction. */
int snt_sys_thread_exit(void *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	snt_sys_args.delete(&tid);
	return 0;
}

/* Copy the sockaddr argument (or a msghdr's msg_name) into the tail; returns its length. */
static __always_inline u32 sentinel_put_sockaddr(char *tail, struct sentinel_cursor *cur,
						 struct sentinel_sys_desc *desc, struct sentinel_sys_enter *saved)
{
	u64 ptr = saved->args[(desc->addr_arg - 1) & 7];
	u64 len = desc->addr_len_arg ? saved->args[(desc->addr_len_arg - 1) & 7] : 0;
	if (desc->flags & SENTINEL_DESC_MSGHDR) {
		u64 msg = ptr;
		ptr = 0;
		u32 namelen = 0;
		bpf_probe_read_user(&ptr, sizeof(ptr), (void *)msg);                 /* msg_name */
		bpf_probe_read_user(&namelen, sizeof(namelen), (void *)(msg + 8));   /* msg_namelen */
		len = namelen;
	}
	if (!ptr || !len)
		return 0;
	if (len > SENTINEL_SOCKADDR_MAX)
		len = SENTINEL_SOCKADDR_MAX;
	u32 off = cur->off;
	if (off >= SENTINEL_TAIL_MAX) {
		cur->flags |= SENTINEL_F_TAIL_FULL;
		return 0;
	}
	u32 size = (u32)len & (2 * SENTINEL_SOCKADDR_MAX - 1);
	if (bpf_probe_read_user(tail + (off & SENTINEL_TAIL_MASK), size, (void *)ptr) != 0)
		return 0;
	cur->off = off + size;
	return size;
}

/* A cheap digest of the sockaddr just copied, to notice a new peer. */
static __always_inline u64 sentinel_addr_digest(const char *addr, u32 len)
{
	u64 words[4] = {};
	if (len > sizeof(words))
		len = sizeof(words);
	bpf_probe_read_kernel(words, len & 31, addr);
	return (words[0] * 31 + words[1]) * 31 + words[2] * 7 + words[3] + len;
}

/* The syscall's arguments from the user registers saved at entry (x86_64: the kernel does
 * not change them during the open family's syscalls). */
static __always_inline int sentinel_args_from_regs(struct sentinel_sys_enter *saved)
{
#if defined(__x86_64__) || defined(__TARGET_ARCH_x86)
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	struct pt_regs copy = {};
	if (bpf_probe_read_kernel(&copy, sizeof(copy), regs) != 0)
		return -1;
	saved->args[0] = copy.di;
	saved->args[1] = copy.si;
	saved->args[2] = copy.dx;
	saved->args[3] = copy.r10;
	saved->args[4] = copy.r8;
	saved->args[5] = copy.r9;
	return 0;
#else
	return -1;
#endif
}

/* capset(hdrp, datap): the sets asked for, from the user's cap_user_data_t (one 32-bit
 * struct for _LINUX_CAPABILITY_VERSION_1, two for versions 2 and 3), into args[2..4]. */
static __always_inline void sentinel_capset_sets(struct sentinel_sys_event *e, u64 header, u64 data)
{
	u32 version = 0;
	bpf_probe_read_user(&version, sizeof(version), (void *)header);
	u32 size = version == SENTINEL_CAP_VERSION_1 ? 12 : 24;
	/* read into the record itself (the stack is full): effective, permitted, inheritable of the
	 * low word, then of the high word, as u32s; then put each set's halves together */
	u32 *raw = (u32 *)&e->args[2];
	if (bpf_probe_read_user(raw, size & 31, (void *)data) != 0) {
		e->args[2] = e->args[3] = e->args[4] = 0;
		return;
	}
	u64 effective = (u64)raw[3] << 32 | raw[0];
	u64 permitted = (u64)raw[4] << 32 | raw[1];
	u64 inheritable = (u64)raw[5] << 32 | raw[2];
	e->args[2] = effective;
	e->args[3] = permitted;
	e->args[4] = inheritable;
}

/* The process a pidfd refers to (file->private_data is its struct pid), as the caller's pid
 * namespace numbers it; 0 when it is not visible there (or the file is not a pidfd: then the
 * namespace read from it is not the caller's). */
static __always_inline s32 sentinel_pidfd_pid(void *private_data)
{
	struct pid *target = (struct pid *)private_data;
	u32 zero = 0;
	struct sentinel_pid_pair *upids = snt_pid_scratch.lookup(&zero);
	if (!target || !upids)
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	struct pid *own = task->thread_pid;
	u32 level = own->level;
	if (level >= SENTINEL_PID_NS_LEVELS)
		return 0;
	u64 at = __builtin_offsetof(struct pid, numbers) + level * sizeof(struct upid);
	bpf_probe_read_kernel(&upids->own, sizeof(upids->own), (char *)own + at);
	u32 target_level = SENTINEL_FIELD(target, level);
	if (target_level < level || target_level >= SENTINEL_PID_NS_LEVELS)
		return 0;
	if (bpf_probe_read_kernel(&upids->target, sizeof(upids->target), (char *)target + at) != 0)
		return 0;
	if (!upids->own.ns || upids->target.ns != upids->own.ns)
		return 0;
	return upids->target.nr;
}

int snt_sys_exit(struct sentinel_sys_exit_args *args)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	u32 nr = (u32)args->syscall_nr;
	struct sentinel_sys_desc *desc = snt_sys_desc.lookup(&nr);
	if (!desc)
		return 0;
	u32 dflags = desc->flags;
	struct sentinel_sys_enter saved = {};
	/* ARGS_AT_EXIT (the open family): arguments are read only for opens that pass the filter */
	int args_at_exit = dflags & SENTINEL_DESC_ARGS_AT_EXIT;
	if (!args_at_exit) {
		struct sentinel_sys_enter *enter = snt_sys_args.lookup(&tid);
		if (!enter)
			return 0;
		saved = *enter;
		snt_sys_args.delete(&tid);
		if (saved.nr != nr)
			return 0;  /* an entry left by a syscall that never returned */
	}
	s64 res = args->ret;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	if (dflags & SENTINEL_DESC_OTHER_PID && desc->pid_arg) {
		u32 target = (u32)saved.args[(desc->pid_arg - 1) & 7];
		if (target == (u32)(bpf_get_current_pid_tgid() >> 32) || target == tid)
			return 0;  /* a signal to itself */
	}
	if (dflags & SENTINEL_DESC_NEED_ADDR) {
		u64 ptr = saved.args[(desc->addr_arg - 1) & 7];
		if (dflags & SENTINEL_DESC_MSGHDR) {
			u64 msg = ptr;
			ptr = 0;
			bpf_probe_read_user(&ptr, sizeof(ptr), (void *)msg);
		}
		if (!ptr)
			return 0;  /* sendto on a connected socket: nothing new to report */
	}
	s64 fd = -1;
	if (dflags & SENTINEL_DESC_FD_RES)
		fd = res;
	else if (desc->fd_arg)
		fd = (s64)(s32)saved.args[(desc->fd_arg - 1) & 7];
	struct file *file = sentinel_fd_file(fd);
	u32 zero = 0;
	struct file *fcopy = snt_file_copy.lookup(&zero);
	if (!fcopy)
		return 0;
	if (!file || bpf_probe_read_kernel(fcopy, SENTINEL_FILE_HEAD, file) != 0) {
		file = 0;
		__builtin_memset(fcopy, 0, SENTINEL_FILE_HEAD);
	}
	u32 fmode = fcopy->f_mode;
	struct inode *inode = fcopy->f_inode;
	struct task_struct *task_btf = (struct task_struct *)bpf_get_current_task_btf();
	struct fs_struct *fs = task_btf->fs;
	struct dentry *root_dentry = fs->root.dentry;
	struct vfsmount *root_mnt = fs->root.mnt;
	struct sentinel_walk *w = 0;
	int open_filter = 0;  /* the path part of the open filter is still to be checked */
	if (dflags & SENTINEL_DESC_OPEN) {
		/* the open filter first, cheapest checks first, before anything is copied for the record */
		u64 *seen = snt_open_stats.lookup(&zero);
		if (seen)
			*seen += 1;
		struct sentinel_open_cfg *cfg = snt_open_cfg.lookup(&zero);
		if (cfg && cfg->enabled) {
			int verdict = sentinel_open_selectors(cfg, file != 0, fcopy->f_flags, inode);
			if (verdict == SENTINEL_OPEN_DROP)
				return 0;
			if (verdict == SENTINEL_OPEN_CHECK_DOTDOT) {
				/* the open family's arguments are read at exit: here, for the path only */
				u64 path = 0;
				if (desc->str_args[0] && (!args_at_exit || sentinel_args_from_regs(&saved) == 0))
					path = saved.args[(desc->str_args[0] - 1) & 7];
				verdict = sentinel_path_has_dotdot(path) ? SENTINEL_OPEN_PASS : SENTINEL_OPEN_CHECK_PATH;
			}
			open_filter = verdict == SENTINEL_OPEN_CHECK_PATH &&
				      !(cfg->pass_created && (fmode & SENTINEL_FMODE_CREATED)) &&
				      !(cfg->has_comms && sentinel_comm_listed());
			if (open_filter && file) {
				w = sentinel_walk_path(fcopy->f_path.dentry, fcopy->f_path.mnt, root_dentry, root_mnt,
						       SENTINEL_F_SYS_PATH_TRUNC, SENTINEL_F_SYS_PATH_DETACHED);
				if (w && !(cfg->has_basenames && sentinel_basename_listed(w)) &&
				    !((!cfg->first_check || sentinel_first_listed(w)) &&
				      (sentinel_walk_prefix_match(w) & sentinel_open_acc_bit(1, fcopy->f_flags))))
					return 0;
				open_filter = 0;
			}
		}
	}
	/* read after the filter: a dropped open never needs it */
	u32 mode = file ? SENTINEL_FIELD(inode, i_mode) : 0;
	int is_socket = file && (mode & SENTINEL_S_IFMT) == SENTINEL_S_IFSOCK;
	struct sentinel_cursor *cur = sentinel_cursor_reset();
	char *rec = sentinel_record();
	if (!rec || !cur)
		return 0;
	struct sentinel_sys_event *e = (struct sentinel_sys_event *)rec;
	char *tail = rec + sizeof(*e);
	u32 start = 0;
	u32 path_len = 0;
	if (file && !is_socket) {
		if (!w)
			w = sentinel_walk_path(fcopy->f_path.dentry, fcopy->f_path.mnt, root_dentry, root_mnt,
					       SENTINEL_F_SYS_PATH_TRUNC, SENTINEL_F_SYS_PATH_DETACHED);
		if (w) {
			sentinel_put_walk(tail, cur, w);
			path_len = cur->off;
		}
	}
	if (args_at_exit && sentinel_args_from_regs(&saved) != 0)
		return 0;
	/* the record's body; the path is already in the tail */
	__builtin_memset(e, 0, sizeof(*e));
	sentinel_fill_header(&e->hdr, SENTINEL_OP_SYSCALL, task);
	e->res = res;
	e->nr = nr;
	__builtin_memcpy(e->args, saved.args, sizeof(e->args));  /* the six real ones */
	if (saved.connected)
		e->flags |= SENTINEL_F_SYS_CONNECTED;
	e->fd = (s32)fd;
	e->path_len = path_len;
	if (file) {
		struct super_block *sb = SENTINEL_FIELD(inode, i_sb);
		e->flags |= SENTINEL_F_SYS_FD;
		e->fd_mode = mode;
		e->fd_ino = SENTINEL_FIELD(inode, i_ino);
		e->fd_dev = SENTINEL_FIELD(sb, s_dev);
		e->fd_fmode = fmode;
		e->fd_oflags = fcopy->f_flags;
		if (is_socket)
			sentinel_socket(e, file, tail, cur);
	}
	/* user strings, read at exit (at entry a page not yet resident would fault) */
	u32 first_len = 0;
	if (desc->str_args[0]) {
		start = cur->off;
		sentinel_put_ustr(tail, cur, (void *)saved.args[(desc->str_args[0] - 1) & 7], SENTINEL_STR_MAX);
		e->str0_len = cur->off - start;
		first_len = e->str0_len;
		if (open_filter && file == 0) {
			/* a failed open: an absolute path is checked as given; a relative one passes */
			if (start >= SENTINEL_TAIL_MAX)
				return 0;
			char *text = tail + (start & SENTINEL_TAIL_MASK);
			if (text[0] == '/' && first_len > 1 && !sentinel_prefix_match(text, first_len - 1))
				return 0;
		}
	}
	if (desc->str_args[1]) {
		start = cur->off;
		sentinel_put_ustr(tail, cur, (void *)saved.args[(desc->str_args[1] - 1) & 7], SENTINEL_STR_MAX);
		e->str1_len = cur->off - start;
	}
	if (desc->str_args[2]) {
		start = cur->off;
		sentinel_put_ustr(tail, cur, (void *)saved.args[(desc->str_args[2] - 1) & 7], SENTINEL_STR_MAX);
		e->str2_len = cur->off - start;
	}
	/* a failed call on a relative path: the directory it was relative to */
	if (res < 0 && desc->str_args[0] && first_len > 0) {
		u32 off0 = (cur->off - e->str2_len - e->str1_len - first_len) & SENTINEL_TAIL_MASK;
		if (tail[off0] != '/') {
			struct dentry *base_dentry = fs->pwd.dentry;
			struct vfsmount *base_mnt = fs->pwd.mnt;
			s32 dirfd = desc->dirfd_arg ? (s32)saved.args[(desc->dirfd_arg - 1) & 7] : -100;
			if (dirfd != -100) {
				struct file *dir = sentinel_fd_file(dirfd);
				base_dentry = SENTINEL_FIELD(dir, f_path.dentry);
				base_mnt = SENTINEL_FIELD(dir, f_path.mnt);
			}
			struct sentinel_walk *w = sentinel_walk_path(base_dentry, base_mnt, root_dentry, root_mnt,
								     SENTINEL_F_SYS_BASE_TRUNC, 0);
			if (w && base_dentry) {
				start = cur->off;
				sentinel_put_walk(tail, cur, w);
				e->base_len = cur->off - start;
			}
		}
	}
	if (desc->addr_arg) {
		start = cur->off;
		e->addr_len = sentinel_put_sockaddr(tail, cur, desc, &saved);
		if (e->addr_len && (dflags & SENTINEL_DESC_NEED_ADDR) && start < SENTINEL_TAIL_MAX) {
			u64 key = 0;
			struct sock *sk = sentinel_fd_sock(task, (s64)(s32)saved.args[(desc->fd_arg - 1) & 7]);
			key = (u64)sk;
			u64 digest = sentinel_addr_digest(tail + (start & SENTINEL_TAIL_MASK), e->addr_len);
			u64 *last = snt_sock_peer.lookup(&key);
			if (!last || *last != digest) {
				e->flags |= SENTINEL_F_SYS_NAME_CHANGED;
				snt_sock_peer.update(&key, &digest);
			}
		}
	}
	if ((dflags & SENTINEL_DESC_BPF_ATTR) && saved.args[0] == SENTINEL_BPF_PROG_LOAD) {
		void *attr = (void *)saved.args[1];
		bpf_probe_read_user(&e->bpf_prog_type, sizeof(e->bpf_prog_type), attr);
		bpf_probe_read_user(e->bpf_prog_name, sizeof(e->bpf_prog_name), attr + 48);
	}
	if (dflags & SENTINEL_DESC_CAPSET)
		sentinel_capset_sets(e, saved.args[0], saved.args[1]);
	if ((dflags & SENTINEL_DESC_PIDFD) && file) {
		/* the struct pid is the file's private data (pidfd), or its inode's (pidfs on newer kernels) */
		s32 target = sentinel_pidfd_pid(fcopy->private_data);
		if (!target)
			target = sentinel_pidfd_pid(SENTINEL_FIELD(inode, i_private));
		e->target_pid = target;
	}
	if (dflags & SENTINEL_DESC_OPEN_HOW) {
		u64 how[3] = {};  /* struct open_how: flags, mode, resolve */
		bpf_probe_read_user(how, sizeof(how), (void *)saved.args[2]);
		e->args[2] = how[0];
		e->args[3] = how[1];
		e->args[4] = how[2];
	}
	if (dflags & SENTINEL_DESC_OPEN) {
		u32 one = 1;
		u64 *sent = snt_open_stats.lookup(&one);
		if (sent)
			*sent += 1;
	}
	e->flags |= cur->flags;
	sentinel_submit(rec, sizeof(*e), cur->off);
	return 0;
}

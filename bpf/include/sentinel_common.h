/* sentinel_common.h - maps and helpers every sentinel BPF program shares.
 *
 * Compiled by bcc against the running kernel's types (real headers or a BTF tree).
 * Kernel memory is read with explicit bpf_probe_read_kernel() (SENTINEL_FIELD) instead of
 * relying on bcc's rewriting of `a->b`, which does not follow pointers taken from raw
 * tracepoint arguments. Kernel differences are handled with SENTINEL_HAVE_* macros that
 * userspace probes from BTF and passes as cflags.
 *
 * Programs and maps are named snt_* (the convention sentinel.kernel.hygiene recognises in
 * bpftool's output); C helpers and types keep the sentinel_ prefix.
 */
#ifndef SENTINEL_COMMON_H
#define SENTINEL_COMMON_H

/* Kernel types: from the real headers where the host has them; with the BTF tree these
 * are stubs of its generated header, or dropped by the loader when it has no stub. */
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/fs.h>
#include <linux/fs_struct.h>
#include <linux/dcache.h>
#include <linux/mount.h>
#include <linux/binfmts.h>
#include <linux/cred.h>
#include <linux/mm_types.h>
#include <linux/pid.h>
#include <linux/tty.h>
#include <linux/tty_driver.h>

#include "sentinel_events.h"

#ifndef SENTINEL_RINGBUF_PAGES
#define SENTINEL_RINGBUF_PAGES 1024
#endif

/* Largest fixed body of any record; the scratch record holds one body plus a tail. */
#define SENTINEL_BODY_MAX 256
#define SENTINEL_RECORD_MAX (SENTINEL_BODY_MAX + SENTINEL_TAIL_MAX + SENTINEL_TAIL_SLACK)
/* The scratch record is a power of two (the per-CPU maximum) so that a size can be bounded
 * with one mask the compiler cannot drop. */
#define SENTINEL_RECORD_BUF 32768

/* struct mount is private to fs/ (never in kernel headers): the path walk reads the three
 * members it needs at offsets userspace takes from BTF (-DSENTINEL_MOUNT_OFF_*=bytes). */
#if defined(SENTINEL_MOUNT_OFF_MNT) && defined(SENTINEL_MOUNT_OFF_PARENT) && defined(SENTINEL_MOUNT_OFF_MOUNTPOINT)
#define SENTINEL_CAN_CROSS_MOUNTS 1
#endif

/* Values that are #defines in the kernel (so not in BTF), stable for decades. */
#define SENTINEL_MNT_INTERNAL 0x4000
#define SENTINEL_TMPFS_MAGIC 0x01021994
#define SENTINEL_HUGETLBFS_MAGIC 0x958458f6
#define SENTINEL_OVERLAYFS_MAGIC 0x794c7630
#define SENTINEL_PIDTYPE_PGID 2
#define SENTINEL_PIDTYPE_SID 3

/* Read one field of a kernel object; 0 when the read faults. */
#define SENTINEL_FIELD(ptr, field)                                                  \
	({                                                                          \
		typeof((ptr)->field) __sentinel_v;                                  \
		__builtin_memset((void *)&__sentinel_v, 0, sizeof(__sentinel_v));        \
		bpf_probe_read_kernel((void *)&__sentinel_v, sizeof(__sentinel_v), &(ptr)->field); \
		__sentinel_v;                                                       \
	})

struct sentinel_record_buf {
	char data[SENTINEL_RECORD_BUF];
};
_Static_assert(SENTINEL_RECORD_MAX <= SENTINEL_RECORD_BUF, "scratch record too small");

/* One ring buffer per CPU, found through snt_rings by the CPU number, so that CPUs do not
 * contend for one reservation lock. snt_ring is the template every ring is made like (and
 * the first CPU's ring); userspace creates the others and fills snt_rings, sharing a ring
 * between CPUs only when there are more possible CPUs than online ones. Userspace puts the
 * records of different rings back in time order (header boot_ns). */
#ifndef SENTINEL_CPU_SLOTS
#define SENTINEL_CPU_SLOTS 1
#endif
BPF_RINGBUF_OUTPUT(snt_ring, SENTINEL_RINGBUF_PAGES);
BPF_ARRAY_OF_MAPS(snt_rings, "snt_ring", SENTINEL_CPU_SLOTS);
/* Records no ring buffer took (full, or its lock refused), per opcode; summed over CPUs by
 * userspace. */
BPF_PERCPU_ARRAY(snt_lost, u64, SENTINEL_OP_SLOTS);
/* Records a ring refused and a second attempt took. Measured on 6.18, 10 s of 20,000
 * syscalls/s: a few reservations fail with the ring empty (the reservation lock, not
 * space), 1-5 records per run even with a ring per CPU; retrying in the CPU's own ring,
 * then in the next CPU's ring, lost none in 4 runs. */
BPF_PERCPU_ARRAY(snt_retried, u64, 1);
/* Where a record is built before it is copied into the ring buffer with its real size. */
BPF_PERCPU_ARRAY(snt_scratch, struct sentinel_record_buf, 1);
/* Wakeups. A record wakes the reader only when it lands in an empty ring (the ring buffer's
 * adaptive notification): an idle reader sleeps until something arrives, and a reader that
 * is behind is not woken per record. After a drain that found records, the reader waits
 * sensor.batch_ms before the next one (records keep the rings non-empty meanwhile, so they
 * wake nobody) unless the doorbell rings: a record of an opcode in snt_urgent_ops (those a
 * kill rule matches) also rings it, so that a kill decision never waits for a batch. */
BPF_RINGBUF_OUTPUT(snt_doorbell, 1);
BPF_ARRAY(snt_urgent_ops, u8, SENTINEL_OP_SLOTS);

/* Syscall tracepoint contexts: the layout every kernel since 4.x uses for syscalls:*. */
struct sentinel_sys_enter_args {
	u64 common;
	s32 syscall_nr;
	u32 _pad;
	u64 args[6];
};

struct sentinel_sys_exit_args {
	u64 common;
	s32 syscall_nr;
	u32 _pad;
	s64 ret;
};

static __always_inline char *sentinel_record(void)
{
	u32 zero = 0;
	struct sentinel_record_buf *buf = snt_scratch.lookup(&zero);
	return buf ? buf->data : 0;
}

static __always_inline u64 sentinel_start_ns(struct task_struct *task)
{
	struct task_struct *leader = SENTINEL_FIELD(task, group_leader);
	return SENTINEL_FIELD(leader, start_boottime);
}

/* Fill the common header for `task` (pid/tid/start/comm from the task, the rest from now). */
static __always_inline void sentinel_fill_header(struct sentinel_header *hdr, u16 op,
						 struct task_struct *task)
{
	hdr->op = op;
	hdr->abi = SENTINEL_ABI_VERSION;
	hdr->size = 0;
	hdr->boot_ns = bpf_ktime_get_boot_ns();
	hdr->start_ns = sentinel_start_ns(task);
	hdr->cgroup_id = bpf_get_current_cgroup_id();
	hdr->pid = SENTINEL_FIELD(task, tgid);
	hdr->tid = SENTINEL_FIELD(task, pid);
	hdr->cpu = bpf_get_smp_processor_id();
	hdr->_pad = 0;
	bpf_probe_read_kernel_str(hdr->comm, sizeof(hdr->comm), &task->comm);
}

/* Copy the record (body + tail) into this CPU's ring buffer (retried there, then in the
 * next CPU's ring, when refused); count it as lost if no attempt takes it. */
static __always_inline void sentinel_submit(char *rec, u32 body_size, u32 tail_len)
{
	struct sentinel_header *hdr = (struct sentinel_header *)rec;
	u64 size = (u64)body_size + tail_len;
	if (size > SENTINEL_RECORD_MAX)
		size = SENTINEL_RECORD_MAX;
	hdr->size = (u32)size;
	/* the mask in asm so the verifier sees it on the register passed to the helper */
	asm volatile("%[size] &= 0x7fff" : [size] "+r"(size));
	u32 op = hdr->op;
	u32 zero = 0;
	u64 wakeup = 0; /* adaptive: wake the reader if the ring was empty */
	u32 cpu = bpf_get_smp_processor_id();
	void *ring = snt_rings.lookup(&cpu);
	long failed = ring ? bpf_ringbuf_output(ring, rec, size, wakeup) : -1;
	if (failed) {
		/* another CPU's ring: its lock is not the one that refused */
		u32 other = cpu + 1 < SENTINEL_CPU_SLOTS ? cpu + 1 : 0;
		void *rescue = snt_rings.lookup(&other);
		if (ring)
			failed = bpf_ringbuf_output(ring, rec, size, wakeup);
		if (failed && rescue)
			failed = bpf_ringbuf_output(rescue, rec, size, wakeup);
		if (failed && rescue)
			failed = bpf_ringbuf_output(rescue, rec, size, wakeup);
		if (!failed) {
			u64 *retried = snt_retried.lookup(&zero);
			if (retried)
				__sync_fetch_and_add(retried, 1);
		}
	}
	u8 *urgent = snt_urgent_ops.lookup(&op);
	if (!failed && urgent && *urgent) {
		u64 bell = op;
		snt_doorbell.ringbuf_output(&bell, sizeof(bell), BPF_RB_FORCE_WAKEUP);
	}
	if (failed) {
		u64 *lost = snt_lost.lookup(&op);
		if (lost)
			__sync_fetch_and_add(lost, 1);
	}
}

/* Where the next tail byte goes, and the record's flags. Kept in map memory on purpose:
 * the verifier does not track values loaded from a map, so loops that append to the tail
 * do not multiply its states (a register offset made the exec program exceed 1M insns). */
struct sentinel_cursor {
	u32 off;
	u32 flags;
};
BPF_PERCPU_ARRAY(snt_cursors, struct sentinel_cursor, 1);

static __always_inline struct sentinel_cursor *sentinel_cursor_reset(void)
{
	u32 zero = 0;
	struct sentinel_cursor *cur = snt_cursors.lookup(&zero);
	if (cur) {
		cur->off = 0;
		cur->flags = 0;
	}
	return cur;
}

/* Keep a loop counter as the compiler's induction variable (the asm emits no instruction).
 * Without it, clang turns `for (j = 0; j < N; j++) { if (j >= count) break; ... }` into a
 * countdown from min(count, N); the 6.1 verifier cannot see that countdown end, so it follows
 * the loop until some other bound stops it (up to the tail size: thousands of rounds, then
 * "The sequence of 8193 jumps is too complex"). Kept, the counter is a constant in each round
 * the verifier follows, and the loop stops at N. */
#define SENTINEL_KEEP_COUNTER(j) asm volatile("" : "+r"(j))

/* Tail writers: each writes at (off & MASK) at most SENTINEL_TAIL_SLACK bytes, so nothing
 * lands past SENTINEL_TAIL_MAX + SENTINEL_TAIL_SLACK; what does not fit sets TAIL_FULL. */
static __always_inline void sentinel_put_kstr(char *tail, struct sentinel_cursor *cur, const void *src)
{
	u32 off = cur->off;
	if (!src)
		return;
	if (off >= SENTINEL_TAIL_MAX) {
		cur->flags |= SENTINEL_F_TAIL_FULL;
		return;
	}
	long n = bpf_probe_read_kernel_str(tail + (off & SENTINEL_TAIL_MASK), SENTINEL_STR_MAX, src);
	if (n > 0)
		cur->off = off + (u32)n;
}

static __always_inline void sentinel_put_ustr(char *tail, struct sentinel_cursor *cur, const void *src, u32 max)
{
	u32 off = cur->off;
	if (!src)
		return;
	if (off >= SENTINEL_TAIL_MAX) {
		cur->flags |= SENTINEL_F_TAIL_FULL;
		return;
	}
	if (max > SENTINEL_TAIL_SLACK)
		max = SENTINEL_TAIL_SLACK;
	long n = bpf_probe_read_user_str(tail + (off & SENTINEL_TAIL_MASK), max, src);
	if (n > 0)
		cur->off = off + (u32)n;
}

/* Append the path of (dentry, vfsmount) as NUL-terminated components, leaf first, up to
 * the task's root (`root_dentry`, `root_mnt`) or the global root. A bounded dentry and
 * mount walk: bpf_d_path() is not available to tracepoint programs. */
static __always_inline void sentinel_put_path(char *tail, struct sentinel_cursor *cur,
					      struct dentry *dentry, struct vfsmount *vfsmnt,
					      struct dentry *root_dentry, struct vfsmount *root_mnt,
					      u32 trunc_flag, u32 detached_flag)
{
#ifdef SENTINEL_CAN_CROSS_MOUNTS
	char *mnt = (char *)vfsmnt - SENTINEL_MOUNT_OFF_MNT;
#endif
	int i;
	for (i = 0; i < SENTINEL_PATH_DEPTH; i++) {
		if (!dentry)
			return;
		if (dentry == root_dentry && vfsmnt == root_mnt)
			return;
		struct dentry *mnt_root = SENTINEL_FIELD(vfsmnt, mnt_root);
		if (dentry == mnt_root) {
#ifdef SENTINEL_CAN_CROSS_MOUNTS
			char *parent_mnt = 0;
			bpf_probe_read_kernel(&parent_mnt, sizeof(parent_mnt), mnt + SENTINEL_MOUNT_OFF_PARENT);
			if (parent_mnt == mnt || !parent_mnt)
				return;  /* the global root (or a detached mount) */
			bpf_probe_read_kernel(&dentry, sizeof(dentry), mnt + SENTINEL_MOUNT_OFF_MOUNTPOINT);
			mnt = parent_mnt;
			vfsmnt = (struct vfsmount *)(parent_mnt + SENTINEL_MOUNT_OFF_MNT);
			continue;
#else
			cur->flags |= trunc_flag;  /* the path above this mount is unknown */
			return;
#endif
		}
		u32 off = cur->off;
		if (off >= SENTINEL_TAIL_MAX) {
			cur->flags |= SENTINEL_F_TAIL_FULL;
			return;
		}
		const unsigned char *name = SENTINEL_FIELD(dentry, d_name.name);
		long n = bpf_probe_read_kernel_str(tail + (off & SENTINEL_TAIL_MASK), SENTINEL_NAME_MAX, name);
		if (n > 0)
			cur->off = off + (u32)n;
		struct dentry *parent = SENTINEL_FIELD(dentry, d_parent);
		if (parent == dentry) {
			/* not under its mount's root: unlinked, or a pseudo file (memfd) */
			cur->flags |= detached_flag;
			return;
		}
		dentry = parent;
	}
	cur->flags |= trunc_flag;
}

#endif /* SENTINEL_COMMON_H */

/* blind.bpf.c - what the syscalls:* tracepoints cannot see, raised as events of its own.
 *
 * 32-bit syscalls (int 0x80, or a 32-bit process) reach the kernel through the compat
 * entry, which skips syscalls:* (they are keyed by native numbers) but not raw_syscalls.
 * io_uring requests are executed by the kernel without any syscall per operation.
 */

#ifndef SENTINEL_TS_COMPAT
#define SENTINEL_TS_COMPAT 0x0002  /* x86 thread_info.status: in a 32-bit syscall */
#endif

/* raw_syscalls:sys_enter: (struct pt_regs *regs, long id) */
int snt_compat_enter(struct bpf_raw_tracepoint_args *ctx)
{
#if defined(__x86_64__) || defined(__TARGET_ARCH_x86)
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	u32 status = 0;
	/* CONFIG_THREAD_INFO_IN_TASK: thread_info is the first member of task_struct */
	bpf_probe_read_kernel(&status, sizeof(status), &task->thread_info.status);
	if (!(status & SENTINEL_TS_COMPAT))
		return 0;
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	char *rec = sentinel_record();
	if (!rec)
		return 0;
	struct sentinel_compat *e = (struct sentinel_compat *)rec;
	__builtin_memset(e, 0, sizeof(*e));
	sentinel_fill_header(&e->hdr, SENTINEL_OP_COMPAT, task);
	e->nr = (u32)ctx->args[1];
	/* i386 argument registers: ebx, ecx, edx, esi, edi, ebp */
	e->args[0] = (u32)SENTINEL_FIELD(regs, bx);
	e->args[1] = (u32)SENTINEL_FIELD(regs, cx);
	e->args[2] = (u32)SENTINEL_FIELD(regs, dx);
	e->args[3] = (u32)SENTINEL_FIELD(regs, si);
	e->args[4] = (u32)SENTINEL_FIELD(regs, di);
	e->args[5] = (u32)SENTINEL_FIELD(regs, bp);
	sentinel_submit(rec, sizeof(*e), 0);
#endif
	return 0;
}

/* io_uring:io_uring_submit_req. Its fields moved between kernels: userspace reads their
 * offsets from the tracepoint's format file (-DSENTINEL_IOU_OFF_*); without them (no such
 * tracepoint) the program is empty and not attached. */
int snt_io_uring_submit(void *ctx)
{
#if defined(SENTINEL_IOU_OFF_OPCODE) && defined(SENTINEL_IOU_OFF_USER_DATA) && defined(SENTINEL_IOU_OFF_FLAGS)
	char *rec = sentinel_record();
	if (!rec)
		return 0;
	struct sentinel_io_uring *e = (struct sentinel_io_uring *)rec;
	__builtin_memset(e, 0, sizeof(*e));
	sentinel_fill_header(&e->hdr, SENTINEL_OP_IO_URING, (struct task_struct *)bpf_get_current_task());
	u8 opcode = 0;
	bpf_probe_read_kernel(&opcode, sizeof(opcode), (char *)ctx + SENTINEL_IOU_OFF_OPCODE);
	e->opcode = opcode;
	bpf_probe_read_kernel(&e->user_data, sizeof(e->user_data), (char *)ctx + SENTINEL_IOU_OFF_USER_DATA);
	bpf_probe_read_kernel(&e->req_flags, sizeof(e->req_flags), (char *)ctx + SENTINEL_IOU_OFF_FLAGS);
#ifdef SENTINEL_IOU_OFF_SQ_THREAD
	u8 sq_thread = 0;
	bpf_probe_read_kernel(&sq_thread, sizeof(sq_thread), (char *)ctx + SENTINEL_IOU_OFF_SQ_THREAD);
	e->sq_thread = sq_thread;
#endif
	sentinel_submit(rec, sizeof(*e), 0);
#endif
	return 0;
}

"""Enrichment: the process table (ancestry, users, containers) and its /proc bootstrap.

- `proctable.ProcessTable`: processes by (pid, start time), fed by the sensor's records.
- `procfs.ProcFS`: one process read from /proc, the way the kernel records describe it.
- `container`: container ids and cgroup paths from /proc/<pid>/cgroup.
- `users.UserResolver`: uid/gid names in each process's own root.
- `clock.wall_clock()`: kernel boot-clock stamps to UTC.
"""

/**
 * The OCI runtime spec (config.json) of a Tide container: what it may see and use.
 *
 * - Namespaces: pid, mount, ipc, uts, network (loopback only: runc brings `lo` up in a new
 *   network namespace and nothing else) and user (container root is host uid 100000+).
 * - Root filesystem read-only; writable only a size-limited tmpfs at /tmp and the socket dir.
 * - No capabilities at all, no-new-privileges, a seccomp profile in the spirit of Docker's
 *   default (the syscalls that reach past a container: mounts, modules, kexec, ptrace, bpf,
 *   perf, keyrings, clock changes, namespace games, … fail with EPERM), runc's masked and
 *   read-only /proc and /sys paths.
 * - cgroups: memory (and swap) limit, CPU weight from cpuMillis and quota from cpuLimitMillis,
 *   pids limit.
 */

export interface ContainerSpecInput {
  /** The skeleton root filesystem (mount points only), shared by every container. */
  rootfs: string;
  args: string[];
  env: string[];
  cwd: string;
  hostname: string;
  /** Extra bind mounts: host path → container path. */
  binds: { source: string; destination: string; readonly: boolean; file?: boolean }[];
  memoryMb: number;
  /** CPU weight, as millicores (1000 = one core's share). */
  cpuMillis: number;
  /** CFS quota in millicores; 0 = none. */
  cpuLimitMillis: number;
  pidsLimit: number;
  tmpMb: number;
  /** cgroup path, e.g. /tide/<id>. */
  cgroupsPath: string;
  /** First host uid/gid of the container's user namespace. */
  idBase: number;
}

/** Host uid/gid that the container's root maps to (and 65535 more after it). */
export const ID_BASE = 100_000;
export const ID_RANGE = 65_536;

/** Syscalls a container never needs and that reach past it (Docker's default profile blocks these too). */
export const BLOCKED_SYSCALLS = [
  'acct',
  'add_key',
  'bpf',
  'clock_adjtime',
  'clock_settime',
  'create_module',
  'delete_module',
  'finit_module',
  'fsconfig',
  'fsmount',
  'fsopen',
  'fspick',
  'get_kernel_syms',
  'get_mempolicy',
  'init_module',
  'ioperm',
  'iopl',
  'kcmp',
  'kexec_file_load',
  'kexec_load',
  'keyctl',
  'lookup_dcookie',
  'mbind',
  'mount',
  'mount_setattr',
  'move_mount',
  'move_pages',
  'name_to_handle_at',
  'nfsservctl',
  'open_by_handle_at',
  'open_tree',
  'perf_event_open',
  'personality',
  'pivot_root',
  'process_vm_readv',
  'process_vm_writev',
  'ptrace',
  'query_module',
  'quotactl',
  'quotactl_fd',
  'reboot',
  'request_key',
  'set_mempolicy',
  'setns',
  'settimeofday',
  'stime',
  'swapoff',
  'swapon',
  'syslog',
  'umount',
  'umount2',
  'unshare',
  'uselib',
  'userfaultfd',
  'ustat',
  'vhangup',
  'vm86',
  'vm86old',
];

/** CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET. */
const CLONE_NEW = [0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000];

const MASKED = [
  '/proc/acpi',
  '/proc/asound',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/sys/firmware',
  '/proc/scsi',
];
const READONLY = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

export function containerSpec(c: ContainerSpecInput): Record<string, unknown> {
  return {
    ociVersion: '1.0.2',
    process: {
      terminal: false,
      user: { uid: 0, gid: 0 },
      args: c.args,
      env: c.env,
      cwd: c.cwd,
      capabilities: { bounding: [], effective: [], permitted: [], ambient: [] },
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: 4096, soft: 4096 }],
      noNewPrivileges: true,
    },
    root: { path: c.rootfs, readonly: true },
    hostname: c.hostname,
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc' },
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
      { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620'] },
      { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
      { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
      { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
      { destination: '/tmp', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', 'mode=1777', `size=${c.tmpMb}m`] },
      ...c.binds.map((b) => ({
        destination: b.destination,
        type: 'bind',
        source: b.source,
        options: [b.file ? 'bind' : 'rbind', b.readonly ? 'ro' : 'rw', 'nosuid', 'nodev'],
      })),
    ],
    linux: {
      namespaces: [{ type: 'pid' }, { type: 'network' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }, { type: 'user' }],
      uidMappings: [{ containerID: 0, hostID: c.idBase, size: ID_RANGE }],
      gidMappings: [{ containerID: 0, hostID: c.idBase, size: ID_RANGE }],
      cgroupsPath: c.cgroupsPath,
      resources: {
        devices: [{ allow: false, access: 'rwm' }],
        memory: { limit: c.memoryMb * 1024 * 1024, swap: c.memoryMb * 1024 * 1024 },
        cpu: {
          shares: Math.max(2, Math.round((c.cpuMillis * 1024) / 1000)),
          ...(c.cpuLimitMillis > 0 ? { quota: Math.max(1000, c.cpuLimitMillis * 100), period: 100_000 } : {}),
        },
        pids: { limit: c.pidsLimit },
      },
      seccomp: {
        defaultAction: 'SCMP_ACT_ALLOW',
        architectures: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32', 'SCMP_ARCH_AARCH64'],
        syscalls: [
          { names: BLOCKED_SYSCALLS, action: 'SCMP_ACT_ERRNO', errnoRet: 1 },
          // clone asking for a new namespace: threads and forks only. (For MASKED_EQ, value is the mask.)
          ...CLONE_NEW.map((flag) => ({
            names: ['clone'],
            action: 'SCMP_ACT_ERRNO',
            errnoRet: 1,
            args: [{ index: 0, value: flag, valueTwo: flag, op: 'SCMP_CMP_MASKED_EQ' }],
          })),
          // clone3 passes its flags in memory, out of seccomp's reach: ENOSYS makes libc fall back to clone.
          { names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: 38 },
        ],
      },
      maskedPaths: MASKED,
      readonlyPaths: READONLY,
    },
  };
}

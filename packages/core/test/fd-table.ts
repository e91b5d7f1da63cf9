// Shared by core's leak tests (fuzz-sequences, fuzz-regressions): the process's open fds and what
// each one is, read from /proc/self/fd (Linux).
import { readdirSync, readlinkSync } from 'node:fs';

/** The process's open fds and what each is (a path, socket:[inode], anon_inode:[io_uring], ...). */
export function fdTable(): Map<string, string> {
  const m = new Map<string, string>();
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      m.set(fd, readlinkSync(`/proc/self/fd/${fd}`));
    } catch {
      /* the readdir's own fd, gone */
    }
  }
  return m;
}

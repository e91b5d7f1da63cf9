// The scratch file the probes beside this one read: 64 MiB (more than this machine's 32 MiB L3)
// of the byte 7, written in 1 MiB blocks to os.tmpdir(). The caller reads it into the page cache
// right before measuring (this VM pages out file pages idle for about a minute) and deletes it.
import { closeSync, openSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const PROBE_FILE_BYTES = 64 << 20;

/** Writes the probe file for probe `tag` (one per process) and returns its path. */
export function writeProbeFile(tag) {
  const path = join(tmpdir(), `miniss-${tag}-probe-${process.pid}.bin`);
  const fd = openSync(path, 'w');
  try {
    const chunk = Buffer.alloc(1 << 20, 7);
    for (let off = 0; off < PROBE_FILE_BYTES; off += chunk.length) writeSync(fd, chunk, 0, chunk.length, off);
  } finally {
    closeSync(fd);
  }
  return path;
}

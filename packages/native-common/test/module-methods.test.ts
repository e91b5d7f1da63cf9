// The native code every miniss addon links from this package, tested through each backend built
// here (describe.each, unavailable ones skipped with their reason): the module functions of
// src/module_methods.cc (allocateBuffer's memory outliving a worker's addon, signalFd) and the
// address parsing of src/op.cc (IPv6 zones given as interface names).
import { spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, readSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { BackendName, IoBackend } from '@miniss/core';
import * as epoll from '@miniss/backend-epoll';
import * as iouring from '@miniss/backend-iouring';
import * as kqueue from '@miniss/backend-kqueue';
import { Driver, openFdCount } from '@miniss/backend-testkit';

const coreEntry = new URL('../../core/dist/index.js', import.meta.url).href;

const backends: { name: BackendName; pkg: string; mod: { createBackend(): IoBackend; isSupported(): { ok: boolean; reason?: string } } }[] = [
  { name: 'io_uring', pkg: 'backend-iouring', mod: iouring },
  { name: 'epoll', pkg: 'backend-epoll', mod: epoll },
  { name: 'kqueue', pkg: 'backend-kqueue', mod: kqueue },
];
for (const { name, mod } of backends) {
  const s = mod.isSupported();
  if (!s.ok) console.warn(`native-common tests on ${name} skipped: ${s.reason}`);
}

/** The interface that carries the IPv6 loopback address (`lo` on Linux, `lo0` on macOS), if any. */
const loopback6 = Object.entries(networkInterfaces()).find(([, addrs]) => addrs?.some((a) => a.address === '::1'))?.[0];

let dir = '';
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'miniss-native-common-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe.each(backends)('$name addon', ({ name, pkg, mod }) => {
  const supported = mod.isSupported().ok;
  const pkgEntry = new URL(`../../${pkg}/dist/index.js`, import.meta.url).href;
  let fdsBefore = 0;
  beforeEach(() => {
    fdsBefore = openFdCount();
  });
  afterEach(() => {
    expect(openFdCount()).toBe(fdsBefore);
  });

  it.runIf(supported)(
    'a worker that allocated buffers (allocateBuffer, Runtime.bufferPool) ends, by itself or terminated, and the process lives on (child: the deleter of that memory ran after Node unloaded the addon, SIGSEGV)',
    () => {
      const worker = `
        const { parentPort, workerData } = require('node:worker_threads');
        (async () => {
          const { Runtime } = await import(workerData.core);
          const m = await import(workerData.pkg);
          const b = m.createBackend();
          globalThis.keep = [b.allocateBuffer(4096, 4096), b.allocateBuffer(100, 512)];
          b.close();
          const rt = new Runtime({ backend: workerData.name });
          globalThis.keep.push(rt.bufferPool.allocate(4096), rt.bufferPool.allocate(65536));
          const aligned = rt.bufferPool.aligned;
          await rt.shutdown();
          parentPort.postMessage(aligned);
        })();`;
      const r = spawnSync(
        process.execPath,
        [
          '--input-type=module',
          '-e',
          `import { Worker } from 'node:worker_threads';
           const workerData = { core: ${JSON.stringify(coreEntry)}, pkg: ${JSON.stringify(pkgEntry)}, name: ${JSON.stringify(name)} };
           const ended = [];
           let aligned = true;
           for (const how of ['exit', 'terminate', 'exit', 'terminate']) {
             // execArgv: [] (CommonJS code; the child's --input-type=module would apply to it).
             const w = new Worker(${JSON.stringify(worker)}, { eval: true, workerData, execArgv: [] });
             const gone = new Promise((r) => w.once('exit', r));
             aligned &&= await new Promise((resolve, reject) => { w.once('message', resolve); w.once('error', reject); });
             if (how === 'terminate') {
               await w.terminate();
             } else {
               // By itself (Node 20 may take seconds to end a worker that used import(): then terminate).
               const t = setTimeout(() => w.terminate(), 5000);
               await gone;
               clearTimeout(t);
             }
             ended.push(how);
           }
           await new Promise((r) => setTimeout(r, 100));
           console.log(JSON.stringify({ ended, aligned }));`,
        ],
        { encoding: 'utf8', timeout: 60_000 },
      );
      expect({ status: r.status, signal: r.signal }, r.stderr).toEqual({ status: 0, signal: null });
      expect(JSON.parse(r.stdout.trim().split('\n').pop()!)).toEqual({ ended: ['exit', 'terminate', 'exit', 'terminate'], aligned: true });
    },
  );

  it.runIf(supported && name !== 'kqueue')(
    "signalFd adds 1 to any backend instance's eventfd, and refuses anything else (EINVAL: a file, a socket, another anonymous-inode fd; EBADF: a closed fd) without writing to it",
    async () => {
      // (kqueue has no eventfds, hence no signalFd.)
      const b = mod.createBackend();
      const other = mod.createBackend();
      const d = new Driver(b);
      const path = join(dir, 'victim');
      writeFileSync(path, 'important data\n');
      const file = openSync(path, 'r+');
      try {
        // Another instance's eventfd (a multicore core signals another core's).
        const efd = b.eventfd!();
        other.signalFd!(efd);
        other.signalFd!(efd);
        const count = Buffer.alloc(8);
        expect(readSync(efd, count, 0, 8, null)).toBe(8);
        expect(count.readBigUInt64LE(0)).toBe(2n);

        // A regular file: the 8 bytes used to land at its current position.
        expect(() => b.signalFd!(file)).toThrow(expect.objectContaining({ code: 'EINVAL', syscall: 'write', fd: file }));
        expect(readFileSync(path, 'latin1')).toBe('important data\n');
        const sock = await d.io({ op: 'socket', family: 4 });
        expect(() => b.signalFd!(sock)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
        await d.io({ op: 'close', fd: sock });
        // The backend's own epoll fd / io_uring fd: an anonymous inode, like an eventfd, but not one.
        const anon = readdirSync('/proc/self/fd')
          .map(Number)
          .filter((fd) => {
            try {
              const k = readlinkSync(`/proc/self/fd/${fd}`);
              return k.startsWith('anon_inode:') && k !== 'anon_inode:[eventfd]';
            } catch {
              return false;
            }
          });
        expect(anon.length).toBeGreaterThan(0);
        for (const fd of anon) expect(() => b.signalFd!(fd), `fd ${fd}`).toThrow(expect.objectContaining({ code: 'EINVAL' }));
        // Not open.
        expect(() => b.signalFd!(-1)).toThrow(expect.objectContaining({ code: 'EBADF' }));
        expect(() => b.signalFd!(sock)).toThrow(expect.objectContaining({ code: 'EBADF' }));
      } finally {
        b.close();
        other.close();
        closeSync(file);
      }
    },
  );

  it.runIf(supported && loopback6 !== undefined)(
    'an IPv6 zone may be an interface name, as in Node (`::1%lo`), or its index; an unknown name is EINVAL',
    async () => {
      const b = mod.createBackend();
      const d = new Driver(b);
      const fds: number[] = [];
      const sock6 = async (): Promise<number> => {
        const fd = await d.io({ op: 'socket', family: 6 });
        fds.push(fd);
        return fd;
      };
      try {
        const l = await sock6();
        await d.io({ op: 'listen', fd: l, addr: { host: `::1%${loopback6}`, port: 0 }, backlog: 16, reusePort: false });
        const port = b.address(l, 'local').port;
        expect(await d.io({ op: 'connect', fd: await sock6(), addr: { host: `::1%${loopback6}`, port } })).toBe(0);
        expect(await d.io({ op: 'connect', fd: await sock6(), addr: { host: '::1%1', port } })).toBe(0);
        const bad = await d.error({ op: 'connect', fd: await sock6(), addr: { host: '::1%nosuchif0', port } });
        expect(bad.code).toBe('EINVAL');
        expect((await d.error({ op: 'connect', fd: await sock6(), addr: { host: '::1%', port } })).code).toBe('EINVAL');
      } finally {
        for (const fd of fds) await d.io({ op: 'close', fd });
        b.close();
      }
    },
  );
});

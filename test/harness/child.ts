// What the hub and agent process wrappers share: reading a live process's memory, and ending it.
import * as fs from 'node:fs';
import type { ChildProcess } from 'node:child_process';

/** VmRSS and VmHWM (peak) of a live process in bytes, or null when it is gone or unknown. */
export function memoryOf(pid: number | undefined): { rssBytes: number; peakBytes: number } | null {
  if (!pid) return null;
  try {
    const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+)\\s+kB`).exec(s)?.[1] ?? 0);
    return { rssBytes: kb('VmRSS') * 1024, peakBytes: kb('VmHWM') * 1024 };
  } catch {
    return null;
  }
}

/** VmRSS of a live process in bytes, or 0. */
export function rssBytes(pid: number | undefined): number {
  return memoryOf(pid)?.rssBytes ?? 0;
}

export function running(p: ChildProcess | undefined): p is ChildProcess {
  return !!p && p.exitCode === null && p.signalCode === null;
}

/** Send `signal` and wait for the exit; SIGKILL after `killAfterMs` if it is still there. */
export function endProcess(p: ChildProcess | undefined, signal: NodeJS.Signals, killAfterMs = 10_000): Promise<void> {
  if (!running(p)) return Promise.resolve();
  return new Promise<void>((r) => {
    const t = setTimeout(() => p.kill('SIGKILL'), killAfterMs);
    p.once('exit', () => {
      clearTimeout(t);
      r();
    });
    p.kill(signal);
  });
}

/**
 * Runs a Primary for the CLI and reports it: the full sync's progress bar, then a status line (epochs per second,
 * dirty pages per epoch, commit latency, outputs held) and the events that matter (unprotected, reprotected, fault,
 * quiesced). Shared by `kemari protect` and by `kemari standby` once it has taken over.
 */
import { Primary } from '../primary/primary.js';
import type { PrimaryCommit, PrimaryOptions, Reprotection, SyncProgress } from '../primary/primary.js';
import type { KemariError } from '../errors.js';
import type { Reporter } from './reporter.js';

/** Starts protecting and reports until `stop` resolves; returns the primary (closed by the caller). */
export async function runProtection(options: PrimaryOptions, reporter: Reporter, statusEveryMs: number): Promise<{ primary: Primary; stopStatus(): void }> {
  let lastProgressMs = 0;
  const primary = await Primary.start({
    ...options,
    onProgress: (p: SyncProgress) => {
      const nowMs = performance.now();
      if (nowMs - lastProgressMs < 100 && p.bytesSent < p.bytesTotal) return;
      lastProgressMs = nowMs;
      reporter.progress(p.bytesSent, p.bytesTotal);
    },
  });
  reporter.event('protected', { sessionId: primary.sessionId, ackedTxn: primary.stats().ackedTxn }, `protected: session ${primary.sessionId}, full sync acked`);
  let pages = 0;
  primary.on('commit', (c: PrimaryCommit) => (pages = c.pages));
  primary.on('unprotected', ({ error, policy }: { error: KemariError; policy: string }) =>
    reporter.event('unprotected', { code: error.code, message: error.message, policy }, `unprotected (${policy}): ${error.message}`),
  );
  primary.on('reprotected', (r: Reprotection) =>
    reporter.event('reprotected', { ...r }, `protected again from txn ${r.fromTxn} (${r.full ? 'full sync' : 'incremental resume'})`),
  );
  primary.on('quiesced', (p: { fault: { source: string; detail?: string }; ackedTxn: number }) =>
    reporter.event('quiesced', { source: p.fault.source, detail: p.fault.detail, ackedTxn: p.ackedTxn }, `quiesced after a fatal fault from ${p.fault.source}; failover handed to the standby`),
  );
  let lastEpochs = primary.stats().epochs;
  let lastMs = performance.now();
  const timer = setInterval(() => {
    const stats = primary.stats();
    const nowMs = performance.now();
    const epochsPerS = ((stats.epochs - lastEpochs) * 1000) / Math.max(1, nowMs - lastMs);
    lastEpochs = stats.epochs;
    lastMs = nowMs;
    const fields = {
      state: stats.state,
      ackedTxn: stats.ackedTxn,
      epochsPerS: Number(epochsPerS.toFixed(1)),
      dirtyPages: pages,
      commitP50Ms: Number(stats.latencyMs.p50.toFixed(2)),
      commitP99Ms: Number(stats.latencyMs.p99.toFixed(2)),
      pauseP50Ms: Number(stats.pauseMs.p50.toFixed(2)),
      outputsHeld: stats.outputsHeld,
      outputsReleased: stats.outputsReleased,
    };
    reporter.status(
      `${stats.state} txn ${stats.ackedTxn} | ${fields.epochsPerS} epochs/s | ${pages} dirty pages | commit p50 ${fields.commitP50Ms} ms p99 ${fields.commitP99Ms} ms | held ${stats.outputsHeld}`,
      fields,
    );
  }, statusEveryMs);
  timer.unref();
  return { primary, stopStatus: () => clearInterval(timer) };
}

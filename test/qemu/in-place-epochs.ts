/**
 * A Primary capturing a real QEMU in place (captureInPlace, with deltas), verified at every ack, then a lost link
 * with epochs the secondary never received: shared by the shadow and the fingerprints tests of QemuVm.
 */
import { expect } from 'vitest';
import { Primary } from '../../src/primary/primary.js';
import type { Reprotection } from '../../src/primary/primary.js';
import type { QemuVm } from '../../src/qemu/qemu-vm.js';
import { Secondary } from '../../src/secondary/secondary.js';
import { connect } from '../../src/transport/index.js';
import { ForwardingConnection } from '../helpers/forwarding-connection.js';

/** Swallows every write once `swallowing`: epochs sent that the secondary never receives. */
class Swallowing extends ForwardingConnection {
  swallowing = false;
  override write(chunks: readonly Uint8Array[]): boolean {
    return this.swallowing ? true : super.write(chunks);
  }
}

async function waitFor(condition: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * Protects `vm` in place until 6 epochs are acked (every incremental capture must come back in place, some pages
 * as deltas), swallows two epochs, cuts the link and checks the resume: incremental, the swallowed epochs' pages
 * marked changed, 4 more epochs verified. Cleanups go to `cleanups`.
 */
export async function runInPlaceEpochs(vm: QemuVm, cleanups: Array<() => unknown>): Promise<void> {
  const secondary = await Secondary.listen<QemuVm>({ host: '127.0.0.1', port: 0, verify: true });
  cleanups.push(() => secondary.close());
  const inPlace: boolean[] = [];
  const capture = vm.capture.bind(vm);
  vm.capture = async (options) => {
    const taken = await capture(options);
    if (!options.full) inPlace.push(taken.inPlace === true);
    return taken;
  };
  const marked: number[] = [];
  const markDirty = vm.markDirty.bind(vm);
  vm.markDirty = (pages) => {
    marked.push(pages.length);
    markDirty(pages);
  };
  let link: Swallowing | undefined;
  const primary = await Primary.start({
    vm,
    connector: async () => (link = new Swallowing(await connect({ host: '127.0.0.1', port: secondary.port }))),
    sync: { mode: 'periodic', intervalMs: 50 },
    verify: true,
    delta: true,
    captureInPlace: true,
    pipelineDepth: 2,
    reconnectDelayMs: 20,
    precopyRoundsMax: 0,
  });
  cleanups.push(() => primary.close());
  await waitFor(() => primary.stats().ackedTxn >= 6, 20_000);
  expect(inPlace.length).toBeGreaterThan(3);
  expect(inPlace.every((x) => x)).toBe(true);
  expect(primary.stats().deltaPages).toBeGreaterThan(0);
  // Epochs go out that the secondary never receives; then the link dies, and the secondary resumes from its
  // committed epoch: those epochs' pages are marked changed and taken from the guest's memory again.
  link!.swallowing = true;
  const swallowedFrom = primary.stats().epochs;
  await waitFor(() => primary.stats().epochs >= swallowedFrom + 2 && primary.stats().inFlight >= 1, 20_000);
  const reprotected = new Promise<Reprotection>((resolve) => primary.once('reprotected', resolve));
  link!.close();
  expect((await reprotected).full).toBe(false);
  expect(marked.length).toBeGreaterThan(0);
  const after = primary.stats().ackedTxn;
  await waitFor(() => primary.stats().ackedTxn >= after + 4, 20_000);
  // Every ack compared digests: a page missing from the resumed transaction would have failed it.
  expect(primary.state).toBe('protected');
  expect(primary.stats().lastError?.code).not.toBe('KEMARI_VERIFY_FAILED');
  expect(() => vm.markDirty(Uint32Array.of(vm.memoryBytes / vm.pageBytes))).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
}

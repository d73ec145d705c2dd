/**
 * A loopback TCP proxy between a primary and a secondary that can partition them: `partition()` drops every byte
 * in both directions while both sockets stay open, as a cut cable or a hung host looks to each side (no FIN, no
 * RST, just silence). Only loopback addresses are involved.
 */
import { connect, createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';

export class PartitionProxy {
  private partitioned = false;
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async start(targetPort: number): Promise<PartitionProxy> {
    let proxy: PartitionProxy | undefined;
    const server = createServer((client) => {
      const upstream = connect(targetPort, '127.0.0.1');
      for (const s of [client, upstream]) {
        proxy!.sockets.add(s);
        s.on('error', () => {});
        s.on('close', () => {
          proxy!.sockets.delete(s);
          // Through a partition, not even a close gets across: the other side keeps its socket open, in silence.
          if (proxy!.partitioned) return;
          client.destroy();
          upstream.destroy();
        });
      }
      client.on('data', (d) => {
        if (!proxy!.partitioned) upstream.write(d);
      });
      upstream.on('data', (d) => {
        if (!proxy!.partitioned) client.write(d);
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    proxy = new PartitionProxy(server, (server.address() as AddressInfo).port);
    return proxy;
  }

  /** From now on every byte is dropped, both ways; the sockets stay open. */
  partition(): void {
    this.partitioned = true;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise((r) => this.server.close(r));
  }
}

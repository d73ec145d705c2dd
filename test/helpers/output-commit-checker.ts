/**
 * Invariant checker for output commit (invariant 2): records every commit the secondary makes and every output the
 * primary releases, and fails at once if an output is released before the secondary has committed its epoch.
 */
import type { Primary } from '../../src/primary/primary.js';
import type { Secondary } from '../../src/secondary/secondary.js';
import type { ReleasedOutput } from '../../src/tap/event-tap.js';

export class OutputCommitChecker {
  committed = 0;
  readonly commits: number[] = [];
  readonly releases: ReleasedOutput[] = [];
  readonly violations: string[] = [];

  constructor(primary: Primary, secondary: Secondary) {
    secondary.on('commit', (c: { txn: number }) => {
      this.commits.push(c.txn);
      this.committed = Math.max(this.committed, c.txn);
    });
    primary.on('release', (r: ReleasedOutput) => {
      this.releases.push(r);
      if (r.txn > this.committed) this.violations.push(`output ${r.id} of epoch ${r.txn} released while the secondary had committed only ${this.committed}`);
    });
  }
}

/** Resolves when the process is asked to stop (SIGINT, SIGTERM) or `signal` aborts: how long-running commands end. */
export function untilStopped(signal: AbortSignal): Promise<string> {
  return new Promise((resolve) => {
    const done = (why: string): void => {
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
      signal.removeEventListener('abort', onAbort);
      resolve(why);
    };
    const onInt = (): void => done('SIGINT');
    const onTerm = (): void => done('SIGTERM');
    const onAbort = (): void => done('aborted');
    process.once('SIGINT', onInt);
    process.once('SIGTERM', onTerm);
    if (signal.aborted) done('aborted');
    else signal.addEventListener('abort', onAbort, { once: true });
  });
}

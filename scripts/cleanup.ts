/**
 * Clean-up on exit for what a script makes outside itself (network namespaces, cgroups): each thing still
 * registered is removed when the process ends, by exit or by SIGINT/SIGTERM. A thing forgets itself once
 * removed by hand.
 */

/** Something that removes itself; safe to call again. */
export interface Removable {
  remove(): void;
}

const standing = new Set<Removable>();
let hooked = false;

/** Removes every thing still registered; one that fails is reported and the others still go. */
function removeAll(): void {
  for (const thing of [...standing]) {
    try {
      thing.remove();
    } catch (e) {
      console.error(`clean-up: ${(e as Error).message}`);
    }
  }
}

function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', removeAll);
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      removeAll();
      // The listener is gone now: the signal again does what it would have done without it.
      process.kill(process.pid, signal);
    });
  }
}

/** Has `thing` removed when the process ends, unless forget(thing) came first. */
export function removeOnExit(thing: Removable): void {
  standing.add(thing);
  hookExit();
}

/** `thing` is gone: nothing to do for it at exit. */
export function forget(thing: Removable): void {
  standing.delete(thing);
}

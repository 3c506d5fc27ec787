/**
 * The states an engine's device holds (Engine.deviceState), by the keys the caller named them with: the
 * latest, which the next step starts from, and the one the last step started from, kept until the next
 * step or load so that a step the caller refuses (its loss was not finite) can still be read back. Both
 * engines' device states keep theirs here; `release` frees a state's device memory.
 */
interface Named<S> {
  state: S;
  key: string;
}

export class HeldStates<S> {
  private latest?: Named<S>;
  private previous?: Named<S>;

  constructor(private readonly release: (state: S) => void) {}

  /** Whether the latest state is the one named `key`. */
  holds(key: string): boolean {
    return this.latest?.key === key;
  }

  /** The latest state; `what` names the call that needs one, for its error. */
  current(what: string): S {
    if (!this.latest) throw new Error(`DeviceState.${what}: no state was loaded`);
    return this.latest.state;
  }

  /** The state named `key`, the latest or the previous one. */
  find(key: string): S {
    const named = [this.latest, this.previous].find((h) => h?.key === key);
    if (!named) throw new Error(`DeviceState.read: the device does not hold the state ${key}`);
    return named.state;
  }

  /** A state loaded from the host: it is the only one held. */
  loaded(state: S, key: string): void {
    this.clear();
    this.latest = { state, key };
  }

  /** A step's result: the latest becomes the previous (the one before that is released). */
  stepped(state: S, key: string): void {
    if (this.previous) this.release(this.previous.state);
    this.previous = this.latest;
    this.latest = { state, key };
  }

  clear(): void {
    for (const named of [this.previous, this.latest]) if (named) this.release(named.state);
    this.latest = this.previous = undefined;
  }
}

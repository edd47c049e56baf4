/** Option parsers shared by the commands. */
import { InvalidArgumentError } from 'commander';

/** A commander parser for an integer in `lo..hi`, rejecting anything else with a message naming `name`. */
export function intOption(name: string, lo: number, hi: number): (v: string) => number {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < lo || n > hi) {
      throw new InvalidArgumentError(`${name} must be an integer in ${lo}..${hi}, got "${v}"`);
    }
    return n;
  };
}

/**
 * Whether a validating function accepts `input`: true when `check(input)`
 * returns, false when it throws (what it throws does not matter here).
 */
export function accepts<T>(check: (input: T) => unknown, input: T): boolean {
  try {
    check(input);
    return true;
  } catch {
    return false;
  }
}

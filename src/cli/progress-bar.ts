/**
 * A one-line progress bar redrawn in place, on a terminal only: when the
 * stream is a file or a pipe (a timer's log) it writes nothing.
 */
export interface ProgressBar {
  update(label: string, done: number, total: number): void;
  /** Clears the line. */
  done(): void;
}

export function progressBar(stream: NodeJS.WriteStream, width = 30): ProgressBar {
  if (!stream.isTTY) return { update() {}, done() {} };
  let drawn = false;
  let last = 0;
  return {
    update(label, done, total) {
      const now = Date.now();
      // At most ten redraws a second; the last step always shows.
      if (done < total && now - last < 100) return;
      last = now;
      const frac = total > 0 ? Math.min(1, done / total) : 0;
      const fill = Math.round(frac * width);
      stream.write(`\r[${'#'.repeat(fill)}${' '.repeat(width - fill)}] ${label} ${done}/${total}\x1b[K`);
      drawn = true;
    },
    done() {
      if (drawn) stream.write('\r\x1b[K');
      drawn = false;
    },
  };
}

/** A progress bar on standard error, drawn only when it is a terminal (scripts see nothing). */
import { formatBytes } from '../common/size.js';

export class ProgressBar {
  private readonly enabled = process.stderr.isTTY === true;
  private readonly started = Date.now();
  private lastDrawMs = 0;

  constructor(
    private readonly label: string,
    private readonly totalBytes: number,
  ) {}

  update(doneBytes: number): void {
    if (!this.enabled) return;
    const now = Date.now();
    if (now - this.lastDrawMs < 100 && doneBytes < this.totalBytes) return;
    this.lastDrawMs = now;
    const fraction = this.totalBytes > 0 ? Math.min(1, doneBytes / this.totalBytes) : 1;
    const width = 30;
    const filled = Math.round(fraction * width);
    const rate = doneBytes / Math.max(0.001, (now - this.started) / 1000);
    process.stderr.write(`\r${this.label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${(fraction * 100).toFixed(0).padStart(3)}% ${formatBytes(doneBytes)} at ${formatBytes(rate)}/s `);
  }

  finish(): void {
    if (this.enabled) process.stderr.write('\n');
  }
}

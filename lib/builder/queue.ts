/**
 * A FIFO queue with a fixed number of slots: at most `slots` jobs run at once, the rest wait
 * in arrival order. A waiting job can leave (cancel); positions are computed, not stored.
 */
export class SlotQueue {
  private readonly waiting: string[] = [];
  private readonly active = new Set<string>();
  private paused = false;

  constructor(readonly slots: number, private readonly start: (id: string) => Promise<void>) {}

  get running(): number {
    return this.active.size;
  }

  get queued(): number {
    return this.waiting.length;
  }

  push(id: string): void {
    this.waiting.push(id);
    this.pump();
  }

  /** Takes a waiting job out; false when it is not waiting (running or unknown). */
  remove(id: string): boolean {
    const index = this.waiting.indexOf(id);
    if (index === -1) return false;
    this.waiting.splice(index, 1);
    return true;
  }

  /** 1 = next to start; undefined when not waiting. */
  position(id: string): number | undefined {
    const index = this.waiting.indexOf(id);
    return index === -1 ? undefined : index + 1;
  }

  /** Stops starting jobs (shutdown); returns the jobs still waiting, which leave the queue. */
  drainWaiting(): string[] {
    this.paused = true;
    return this.waiting.splice(0);
  }

  private pump(): void {
    while (!this.paused && this.active.size < this.slots && this.waiting.length > 0) {
      const id = this.waiting.shift() as string;
      this.active.add(id);
      void this.start(id).finally(() => {
        this.active.delete(id);
        this.pump();
      });
    }
  }
}

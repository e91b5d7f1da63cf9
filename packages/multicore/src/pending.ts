/**
 * The tasks a core has placed and not seen settle, by id: a direct-mapped table (`id & mask`)
 * with a Map for the rare collision. Ids increase by one per task, so live ids rarely collide
 * while fewer than `SIZE` tasks are in flight: a lookup is an array read and an id compare, and
 * insertion/removal allocate nothing (a Map keyed by ever-growing ids keeps rehashing).
 */
const SIZE = 4096;
const MASK = SIZE - 1;

export class PendingTable<V extends { readonly id: number }> {
  private readonly slots: Array<V | undefined> = new Array<V | undefined>(SIZE).fill(undefined);
  private readonly overflow = new Map<number, V>();
  size = 0;

  get(id: number): V | undefined {
    const v = this.slots[id & MASK];
    if (v !== undefined && v.id === id) return v;
    return this.overflow.size > 0 ? this.overflow.get(id) : undefined;
  }

  set(v: V): void {
    const i = v.id & MASK;
    if (this.slots[i] === undefined) this.slots[i] = v;
    else this.overflow.set(v.id, v);
    this.size++;
  }

  delete(id: number): boolean {
    const i = id & MASK;
    const v = this.slots[i];
    if (v !== undefined && v.id === id) {
      this.slots[i] = undefined;
      this.size--;
      return true;
    }
    if (this.overflow.size > 0 && this.overflow.delete(id)) {
      this.size--;
      return true;
    }
    return false;
  }

  /** Every entry (a snapshot: safe to delete while iterating it). */
  values(): V[] {
    const out: V[] = [];
    if (this.size === 0) return out;
    for (const v of this.slots) if (v !== undefined) out.push(v);
    for (const v of this.overflow.values()) out.push(v);
    return out;
  }

  clear(): void {
    if (this.size === 0) return;
    this.slots.fill(undefined);
    this.overflow.clear();
    this.size = 0;
  }
}

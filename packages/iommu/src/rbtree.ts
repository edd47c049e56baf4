/**
 * A red-black tree of disjoint intervals keyed by their start, the ordered structure under the
 * IOVA allocator. Models Linux `lib/rbtree.c` / `include/linux/rbtree.h` (v6.17): nodes are
 * intrusive (the user's object is the node), every node knows its parent so that `rbNext` /
 * `rbPrev` walk in order without a stack, and insert and erase rebalance in O(log n).
 *
 * Deliberate differences: the kernel tree is generic (callers link a node at a position they found
 * themselves, then call `rb_insert_color`); this one knows its keys (`pfnLo`, with `pfnHi` for
 * containment searches), so it offers keyed insert and lookups directly, plus `insertBefore` for
 * the allocator's "I already know the neighbour" case. Colour is a boolean, not bits packed into
 * the parent pointer. The rebalancing follows the textbook (CLRS) formulation rather than the
 * kernel's case numbering; the invariants are the same.
 *
 * `RbRoot` is about 340 lines because insert and erase rebalancing each come in two mirrored
 * halves (left and right), as in lib/rbtree.c; splitting the halves apart would hide that they
 * mirror each other.
 */

/**
 * One tree node carrying an inclusive interval `[pfnLo, pfnHi]`. Kernel counterpart:
 * `struct rb_node` (include/linux/rbtree_types.h), embedded in `struct iova`; here the interval
 * lives on the node itself and subclasses add their own fields.
 */
export class RbNode {
  /** First pfn of the interval (the key). */
  pfnLo: number;
  /** Last pfn of the interval (inclusive). */
  pfnHi: number;
  /** Left child (smaller keys), or null. */
  rbLeft: RbNode | null = null;
  /** Right child (larger keys), or null. */
  rbRight: RbNode | null = null;
  /** Parent, or null for the root (and for a node that is not in a tree). */
  rbParent: RbNode | null = null;
  /** True when red; the root and every missing leaf are black. */
  rbRed = true;

  constructor(pfnLo: number, pfnHi: number) {
    this.pfnLo = pfnLo;
    this.pfnHi = pfnHi;
  }
}

/**
 * The in-order successor of `node`, or null for the last node. Kernel counterpart: `rb_next`
 * (lib/rbtree.c). O(1) amortised, O(log n) worst case.
 */
export function rbNext(node: RbNode): RbNode | null {
  let n = node.rbRight;
  if (n !== null) {
    while (n.rbLeft !== null) n = n.rbLeft;
    return n;
  }
  let child = node;
  let parent = node.rbParent;
  while (parent !== null && parent.rbRight === child) {
    child = parent;
    parent = parent.rbParent;
  }
  return parent;
}

/**
 * The in-order predecessor of `node`, or null for the first node. Kernel counterpart: `rb_prev`
 * (lib/rbtree.c). O(1) amortised, O(log n) worst case.
 */
export function rbPrev(node: RbNode): RbNode | null {
  let n = node.rbLeft;
  if (n !== null) {
    while (n.rbRight !== null) n = n.rbRight;
    return n;
  }
  let child = node;
  let parent = node.rbParent;
  while (parent !== null && parent.rbLeft === child) {
    child = parent;
    parent = parent.rbParent;
  }
  return parent;
}

/**
 * The tree. Kernel counterpart: `struct rb_root` with `rb_insert_color`, `rb_erase`, `rb_first`,
 * `rb_last` (lib/rbtree.c). Differs: keyed insert and lookups are built in (the kernel leaves the
 * descent to each user), and it counts its nodes.
 */
export class RbRoot<N extends RbNode = RbNode> {
  /** The root node, or null when empty. */
  root: N | null = null;
  #size = 0;

  /** Number of nodes in the tree. */
  get size(): number {
    return this.#size;
  }

  /** The node with the smallest key (kernel: `rb_first`), or null. */
  first(): N | null {
    let n: RbNode | null = this.root;
    if (n === null) return null;
    while (n.rbLeft !== null) n = n.rbLeft;
    return n as N;
  }

  /** The node with the largest key (kernel: `rb_last`), or null. */
  last(): N | null {
    let n: RbNode | null = this.root;
    if (n === null) return null;
    while (n.rbRight !== null) n = n.rbRight;
    return n as N;
  }

  /**
   * The node whose interval contains `pfn`, or null. Kernel counterpart: the descent in
   * `private_find_iova` (drivers/iommu/iova.c); needs disjoint intervals.
   */
  findContaining(pfn: number): N | null {
    let n: RbNode | null = this.root;
    while (n !== null) {
      if (pfn < n.pfnLo) n = n.rbLeft;
      else if (pfn > n.pfnHi) n = n.rbRight;
      else return n as N;
    }
    return null;
  }

  /**
   * The lowest node whose interval ends at or above `pfn` (its `pfnHi >= pfn`), or null. With
   * disjoint intervals that is the node containing `pfn` or else the first one above it. Kernel
   * counterpart: what `iova_find_limit` (drivers/iommu/iova.c) looks for, written as a plain
   * lower-bound descent.
   */
  firstEndingAtOrAbove(pfn: number): N | null {
    let n: RbNode | null = this.root;
    let best: RbNode | null = null;
    while (n !== null) {
      if (n.pfnHi >= pfn) {
        best = n;
        n = n.rbLeft;
      } else {
        n = n.rbRight;
      }
    }
    return best as N | null;
  }

  /**
   * Inserts `node` by its `pfnLo` and rebalances. Returns false (and leaves the tree unchanged)
   * when a node with the same key is already present, where the kernel's `iova_insert_rbtree`
   * WARNs and returns. Kernel counterpart: the descent + `rb_link_node` + `rb_insert_color`.
   */
  insert(node: N): boolean {
    const key = node.pfnLo;
    let parent: RbNode | null = null;
    let n: RbNode | null = this.root;
    let left = false;
    while (n !== null) {
      parent = n;
      if (key < n.pfnLo) {
        n = n.rbLeft;
        left = true;
      } else if (key > n.pfnLo) {
        n = n.rbRight;
        left = false;
      } else {
        return false;
      }
    }
    this.#link(node, parent, left);
    return true;
  }

  /**
   * Inserts `node` immediately before `succ` in key order (the caller guarantees that `node`'s
   * key lies between `rbPrev(succ)` and `succ`) and rebalances, without a search from the root.
   * Kernel counterpart: `iova_insert_rbtree` started from a known node (drivers/iommu/iova.c).
   */
  insertBefore(node: N, succ: N): void {
    let n = succ.rbLeft;
    if (n === null) {
      this.#link(node, succ, true);
      return;
    }
    while (n.rbRight !== null) n = n.rbRight;
    this.#link(node, n, false);
  }

  /** Removes `node` from the tree and rebalances (kernel: `rb_erase`). */
  erase(node: N): void {
    const z: RbNode = node;
    let y: RbNode = z;
    let yWasRed = y.rbRed;
    let x: RbNode | null;
    let xParent: RbNode | null;
    if (z.rbLeft === null) {
      x = z.rbRight;
      xParent = z.rbParent;
      this.#transplant(z, x);
    } else if (z.rbRight === null) {
      x = z.rbLeft;
      xParent = z.rbParent;
      this.#transplant(z, x);
    } else {
      // successor: leftmost node of the right subtree
      y = z.rbRight;
      while (y.rbLeft !== null) y = y.rbLeft;
      yWasRed = y.rbRed;
      x = y.rbRight;
      if (y.rbParent === z) {
        xParent = y;
      } else {
        xParent = y.rbParent;
        this.#transplant(y, x);
        y.rbRight = z.rbRight;
        (y.rbRight as RbNode).rbParent = y;
      }
      this.#transplant(z, y);
      y.rbLeft = z.rbLeft;
      (y.rbLeft as RbNode).rbParent = y;
      y.rbRed = z.rbRed;
    }
    if (!yWasRed) this.#eraseFixup(x, xParent);
    z.rbLeft = null;
    z.rbRight = null;
    z.rbParent = null;
    z.rbRed = true;
    this.#size--;
  }

  /** Removes every node (without visiting them). */
  clear(): void {
    this.root = null;
    this.#size = 0;
  }

  /**
   * Verifies the red-black and ordering invariants: black root, no red node with a red child,
   * equal black height on every path, consistent parent links, strictly increasing disjoint
   * intervals with `pfnLo <= pfnHi`, and the node count. Throws an `Error` naming the first
   * violation. For tests; O(n).
   */
  check(): void {
    const root = this.root;
    if (root === null) {
      if (this.#size !== 0) throw new Error(`rbtree: empty tree but size ${this.#size}`);
      return;
    }
    if (root.rbParent !== null) throw new Error('rbtree: root has a parent');
    if (root.rbRed) throw new Error('rbtree: red root');
    let count = 0;
    let prevHi = Number.NEGATIVE_INFINITY;
    // iterative in-order walk checking order, plus a recursive black-height check
    for (let n: RbNode | null = this.first(); n !== null; n = rbNext(n)) {
      count++;
      if (n.pfnLo > n.pfnHi) throw new Error(`rbtree: node [${n.pfnLo}, ${n.pfnHi}] inverted`);
      if (n.pfnLo <= prevHi) throw new Error(`rbtree: node at ${n.pfnLo} overlaps or is out of order`);
      prevHi = n.pfnHi;
    }
    if (count !== this.#size) throw new Error(`rbtree: counted ${count} nodes, size says ${this.#size}`);
    const blackHeight = (n: RbNode | null): number => {
      if (n === null) return 1;
      for (const c of [n.rbLeft, n.rbRight]) {
        if (c === null) continue;
        if (c.rbParent !== n) throw new Error(`rbtree: bad parent link under ${n.pfnLo}`);
        if (n.rbRed && c.rbRed) throw new Error(`rbtree: red node ${n.pfnLo} has a red child`);
      }
      const l = blackHeight(n.rbLeft);
      const r = blackHeight(n.rbRight);
      if (l !== r) throw new Error(`rbtree: black heights differ under ${n.pfnLo} (${l} vs ${r})`);
      return l + (n.rbRed ? 0 : 1);
    };
    blackHeight(root);
  }

  /** Links a fresh node as a child of `parent` (kernel: `rb_link_node`), then rebalances. */
  #link(node: RbNode, parent: RbNode | null, left: boolean): void {
    node.rbParent = parent;
    node.rbLeft = null;
    node.rbRight = null;
    node.rbRed = true;
    if (parent === null) this.root = node as N;
    else if (left) parent.rbLeft = node;
    else parent.rbRight = node;
    this.#size++;
    this.#insertFixup(node);
  }

  /** Restores the red-black invariants after linking the red node `z` (kernel: `rb_insert_color`). */
  #insertFixup(z: RbNode): void {
    let p = z.rbParent;
    while (p?.rbRed) {
      // p is red, so it is not the root and has a parent
      const g = p.rbParent as RbNode;
      if (p === g.rbLeft) {
        const u = g.rbRight;
        if (u?.rbRed) {
          p.rbRed = false;
          u.rbRed = false;
          g.rbRed = true;
          z = g;
          p = z.rbParent;
          continue;
        }
        if (z === p.rbRight) {
          this.#rotateLeft(p);
          z = p;
          p = z.rbParent as RbNode;
        }
        p.rbRed = false;
        g.rbRed = true;
        this.#rotateRight(g);
      } else {
        const u = g.rbLeft;
        if (u?.rbRed) {
          p.rbRed = false;
          u.rbRed = false;
          g.rbRed = true;
          z = g;
          p = z.rbParent;
          continue;
        }
        if (z === p.rbLeft) {
          this.#rotateRight(p);
          z = p;
          p = z.rbParent as RbNode;
        }
        p.rbRed = false;
        g.rbRed = true;
        this.#rotateLeft(g);
      }
      break;
    }
    (this.root as RbNode).rbRed = false;
  }

  /**
   * Restores the invariants after removing a black node: `x` (possibly null) carries an extra
   * black and sits under `parent` (kernel: `____rb_erase_color`).
   */
  #eraseFixup(x: RbNode | null, parent: RbNode | null): void {
    while (x !== this.root && (x === null || !x.rbRed)) {
      const p = parent as RbNode;
      if (x === p.rbLeft) {
        // the sibling of a doubly-black node always exists
        let w = p.rbRight as RbNode;
        if (w.rbRed) {
          w.rbRed = false;
          p.rbRed = true;
          this.#rotateLeft(p);
          w = p.rbRight as RbNode;
        }
        const wl = w.rbLeft;
        const wr = w.rbRight;
        if ((wl === null || !wl.rbRed) && (wr === null || !wr.rbRed)) {
          w.rbRed = true;
          x = p;
          parent = p.rbParent;
          continue;
        }
        if (wr === null || !wr.rbRed) {
          (wl as RbNode).rbRed = false;
          w.rbRed = true;
          this.#rotateRight(w);
          w = p.rbRight as RbNode;
        }
        w.rbRed = p.rbRed;
        p.rbRed = false;
        (w.rbRight as RbNode).rbRed = false;
        this.#rotateLeft(p);
      } else {
        let w = p.rbLeft as RbNode;
        if (w.rbRed) {
          w.rbRed = false;
          p.rbRed = true;
          this.#rotateRight(p);
          w = p.rbLeft as RbNode;
        }
        const wl = w.rbLeft;
        const wr = w.rbRight;
        if ((wl === null || !wl.rbRed) && (wr === null || !wr.rbRed)) {
          w.rbRed = true;
          x = p;
          parent = p.rbParent;
          continue;
        }
        if (wl === null || !wl.rbRed) {
          (wr as RbNode).rbRed = false;
          w.rbRed = true;
          this.#rotateLeft(w);
          w = p.rbLeft as RbNode;
        }
        w.rbRed = p.rbRed;
        p.rbRed = false;
        (w.rbLeft as RbNode).rbRed = false;
        this.#rotateRight(p);
      }
      x = this.root;
      break;
    }
    if (x !== null) x.rbRed = false;
  }

  /** Puts `v` where `u` was under `u`'s parent (or at the root). */
  #transplant(u: RbNode, v: RbNode | null): void {
    const p = u.rbParent;
    if (p === null) this.root = v as N | null;
    else if (p.rbLeft === u) p.rbLeft = v;
    else p.rbRight = v;
    if (v !== null) v.rbParent = p;
  }

  #rotateLeft(x: RbNode): void {
    const y = x.rbRight as RbNode;
    const b = y.rbLeft;
    x.rbRight = b;
    if (b !== null) b.rbParent = x;
    this.#transplant(x, y);
    y.rbLeft = x;
    x.rbParent = y;
  }

  #rotateRight(x: RbNode): void {
    const y = x.rbLeft as RbNode;
    const b = y.rbRight;
    x.rbLeft = b;
    if (b !== null) b.rbParent = x;
    this.#transplant(x, y);
    y.rbRight = x;
    x.rbParent = y;
  }
}

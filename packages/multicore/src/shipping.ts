import { RuntimeError } from '@miniss/core';

/**
 * Shipping functions between cores by source.
 *
 * A closure cannot cross threads (each core is its own V8 isolate), so a task function travels
 * as its source text (`fn.toString()`) and is compiled on the receiving core once, cached by
 * that text. The compiled function runs in the receiving core's global scope: it sees its
 * arguments, globals, and whatever it imports with `await import(...)`, never the variables of
 * the scope it was written in. Core 0 compiles from source too, so a function that works on
 * core 0 works on every core and one that reads an outer variable fails the same way everywhere.
 *
 * A function that reads an outer variable throws a `ReferenceError` when it runs; the core turns
 * it into a `RuntimeError` with code `TASK_NOT_SHIPPABLE` and a hint. Sources that cannot be
 * compiled on their own (native or bound functions, class methods written in shorthand) fail
 * up front with the same code.
 */

export interface ShippedFn {
  fn: (...args: unknown[]) => unknown;
  src: string;
  /**
   * Pass the AbortSignal whatever the number of arguments: a parameter has a default value or is
   * a rest parameter (`fn.length` does not count it, nor those after it), the body reads
   * `arguments`, or the parameter list could not be read.
   */
  alwaysSignal: boolean;
  /** `fn.length`: with `alwaysSignal` false, exactly the parameters the function declares. */
  declared: number;
}

const compiled = new Map<string, ShippedFn>();

/** The source text of `fn`, checked for what cannot possibly be compiled elsewhere. */
export function sourceOf(fn: unknown): string {
  if (typeof fn !== 'function') {
    throw new RuntimeError('INVALID_ARGUMENT', `a task must be a function, got ${fn === null ? 'null' : typeof fn}`);
  }
  const src = Function.prototype.toString.call(fn);
  if (/\{\s*\[native code\]\s*\}\s*$/.test(src)) {
    throw new RuntimeError(
      'TASK_NOT_SHIPPABLE',
      `the task function is native or bound (${fn.name || 'anonymous'}): it has no source to ship to another core. Pass an arrow function or function expression, and give it what it needs as arguments`,
    );
  }
  if (/^class[\s{]/.test(src)) {
    throw new RuntimeError('TASK_NOT_SHIPPABLE', 'a class cannot be a task: pass a function');
  }
  return src;
}

/** Compiles `src` in this thread's global scope (once per source text). */
export function compile(src: string): ShippedFn {
  let c = compiled.get(src);
  if (c !== undefined) return c;
  let fn: unknown;
  try {
    fn = new Function(`return (${src}\n);`)();
  } catch (err) {
    // Method shorthand (`run() {...}`, `async run() {...}`) is not an expression: retry as an object member.
    try {
      const holder = new Function(`return ({ ${src}\n });`)() as Record<string, unknown>;
      fn = Object.values(holder)[0];
    } catch {
      throw new RuntimeError(
        'TASK_NOT_SHIPPABLE',
        `the task function's source cannot be compiled on its own (${(err as Error)?.message}): pass an arrow function or function expression`,
        { cause: err },
      );
    }
  }
  if (typeof fn !== 'function') {
    throw new RuntimeError('TASK_NOT_SHIPPABLE', 'the task source did not compile to a function');
  }
  c = {
    fn: fn as (...args: unknown[]) => unknown,
    src,
    declared: (fn as (...a: unknown[]) => unknown).length,
    alwaysSignal: paramsHaveDefaultOrRest(src) || /\barguments\b/.test(src),
  };
  compiled.set(src, c);
  return c;
}

/**
 * True when the parameter list of the function whose source is `src` contains a `=` (a default
 * value, at any depth) or `...` (a rest parameter or element), or when it cannot be found: then
 * `fn.length` may undercount the parameters and the task gets its signal in any case. Costs nothing
 * per task: it runs once per source, when the source is compiled.
 *
 * The list starts at the first `(` outside brackets (a computed method name) unless the function
 * is an arrow with one bare parameter. Strings, template literals and comments are skipped, so a
 * `)` or `=` inside them is not taken for the end of the list or a default. An expression can only
 * appear in the list after a `=` (where the scan has stopped already) or in a computed key of a
 * destructuring pattern.
 */
export function paramsHaveDefaultOrRest(src: string): boolean {
  const n = src.length;
  let i = skipTrivia(src, 0);
  if (SINGLE_PARAM_ARROW.test(src.slice(i, i + 300))) return false;
  // Find the opening parenthesis of the parameter list.
  let brackets = 0;
  for (;;) {
    i = skipTrivia(src, i);
    if (i >= n) return true;
    const c = src.charCodeAt(i);
    if (c === 0x28 /* ( */ && brackets === 0) break;
    if (c === 0x5b /* [ */) brackets++;
    else if (c === 0x5d /* ] */) brackets--;
    else if (c === 0x3d /* = */) return true; // `=>` of an arrow without parentheses: not expected here
    i = skipToken(src, i);
    if (i < 0) return true;
  }
  // Scan the list up to its closing parenthesis.
  let depth = 0;
  i++;
  for (;;) {
    i = skipTrivia(src, i);
    if (i >= n) return true;
    const c = src.charCodeAt(i);
    if (c === 0x3d /* = */) return true;
    if (c === 0x2e /* . */ && src.startsWith('...', i)) return true;
    if (c === 0x28 || c === 0x5b || c === 0x7b) depth++;
    else if (c === 0x29 || c === 0x5d || c === 0x7d) {
      if (depth === 0) return c !== 0x29;
      depth--;
    }
    i = skipToken(src, i);
    if (i < 0) return true;
  }
}

/** `x => ...` or `async x => ...`: one bare parameter, which can have no default. */
const SINGLE_PARAM_ARROW = /^(?:async\s+)?[\p{ID_Start}$_][\p{ID_Continue}$\u200c\u200d]*\s*=>/u;

/** Index after whitespace and comments from `i`. */
function skipTrivia(src: string, i: number): number {
  const n = src.length;
  while (i < n) {
    const c = src.charCodeAt(i);
    if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d || c === 0x0b || c === 0x0c || c === 0xa0 || c === 0xfeff || c === 0x2028 || c === 0x2029) {
      i++;
    } else if (c === 0x2f /* / */ && src.charCodeAt(i + 1) === 0x2f) {
      while (i < n && src.charCodeAt(i) !== 0x0a && src.charCodeAt(i) !== 0x0d) i++;
    } else if (c === 0x2f && src.charCodeAt(i + 1) === 0x2a /* * */) {
      const end = src.indexOf('*/', i + 2);
      if (end < 0) return n;
      i = end + 2;
    } else if (c > 0x7f && /\s/.test(src[i]!)) {
      i++;
    } else break;
  }
  return i;
}

/** Index after the token at `i`: a whole string or template literal (-1 if unterminated), else one character. */
function skipToken(src: string, i: number): number {
  const q = src.charCodeAt(i);
  if (q !== 0x22 && q !== 0x27 && q !== 0x60) return i + 1;
  for (let j = i + 1; j < src.length; j++) {
    const c = src.charCodeAt(j);
    if (c === 0x5c /* \\ */) j++;
    else if (c === q) return j + 1;
  }
  return -1;
}

/**
 * Turns the `ReferenceError` of a function that reads a variable of its defining scope into
 * `TASK_NOT_SHIPPABLE`. Other errors pass through unchanged.
 */
export function explainNotShippable(err: unknown, src: string, core: number): unknown {
  if (!(err instanceof ReferenceError)) return err;
  const m = /^(\S+) is not defined$/.exec(err.message);
  if (m === null) return err;
  const name = m[1]!;
  // Only when the name appears in the function's own text: a ReferenceError raised deeper (in a
  // module the task imported) is that module's bug, not a shipping problem.
  if (!new RegExp(`(^|[^\\w$.])${name.replace(/\$/g, '\\$')}($|[^\\w$])`).test(src)) return err;
  const e = new RuntimeError(
    'TASK_NOT_SHIPPABLE',
    `the task uses '${name}', a variable of the scope it was written in, but tasks run on another thread ` +
      `(core ${core}) from their source text only. Pass '${name}' as an argument (mc.spawn((${name}) => ..., ${name})), ` +
      `or import it inside the task with await import(...)`,
    { cause: err },
  );
  if (err.stack !== undefined) e.stack = `${e.name}: ${e.message}\n${err.stack.split('\n').slice(1).join('\n')}`;
  return e;
}

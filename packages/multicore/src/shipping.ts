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
  /** The function takes its AbortSignal: it declares more parameters than the call gives, or uses rest/arguments. */
  usesRestOrArguments: boolean;
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
    usesRestOrArguments: /\.\.\.|\barguments\b/.test(src),
  };
  compiled.set(src, c);
  return c;
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

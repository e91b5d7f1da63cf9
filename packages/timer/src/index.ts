/**
 * @miniss/timer: timers on a hierarchical timer wheel per runtime, loaded by
 * `new Runtime({ features: ['timer'] })`. See README.md for the design and the measured numbers.
 */
export { minissPlugin, currentDriver, TimerDriver, type TimerStats } from './driver.js';
export { sleep, setTimer, clearTimer, type SleepOptions } from './sleep.js';
export { timeout, withTimeout, TimeoutError, type TimeoutWork } from './timeout.js';
export {
  Interval,
  MISSED_TICK_TOLERANCE_MS,
  nextTickTime,
  type IntervalOptions,
  type MissedTickBehavior,
  type TickOptions,
} from './interval.js';
export { spawnPeriodic, PeriodicHandle, type PeriodicOptions } from './periodic.js';
export {
  TimerWheel,
  ManualClock,
  monotonicClock,
  LEVELS,
  SLOTS_PER_LEVEL,
  WHEEL_SPAN,
  MAX_TIMERS,
  type Clock,
  type TimerId,
  type TimerTarget,
  type TimerWheelOptions,
} from './wheel.js';
export { MAX_DELAY_MS } from './validate.js';

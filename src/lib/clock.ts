/** Wall-clock source, injectable so tests can move time. */
export interface Clock {
  now(): number;
}

/** The system's wall clock. */
export const systemClock: Clock = { now: () => Date.now() };

/**
 * Wall time that advances with the monotonic clock from the moment it is
 * made: a system clock stepped forward or back neither expires every lease
 * at once nor keeps them forever. Slewing (NTP) moves both alike.
 */
export function monotonicWallClock(wall: () => number = Date.now, mono: () => number = () => performance.now()): Clock {
  const anchorWall = wall();
  const anchorMono = mono();
  // Whole milliseconds: the STRICT INTEGER columns in state refuse fractions.
  return { now: () => Math.floor(anchorWall + (mono() - anchorMono)) };
}

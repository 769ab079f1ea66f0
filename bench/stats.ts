// Order statistics the benchmarks report: on a shared machine a neighbour's burst inflates a
// mean, so figures are medians (and quantiles) of repeated measurements. Neither sorts its input.

const sorted = (xs: readonly number[]) => {
  if (xs.length === 0) throw new Error('no values');
  return [...xs].sort((a, b) => a - b);
};

/** The middle value (for an even count, the upper of the two). */
export const median = (xs: readonly number[]): number => sorted(xs)[Math.floor(xs.length / 2)]!;

/** The value a fraction q of the way from the smallest (q = 0) to the largest (q = 1). */
export const quantile = (xs: readonly number[], q: number): number => sorted(xs)[Math.floor(q * (xs.length - 1))]!;

/** Swap the last two axes of `batch` row-major [rows, cols] matrices: [batch, rows, cols] → [batch, cols, rows]. */
export function transposeLast2(m: Float32Array, batch: number, rows: number, cols: number): Float32Array {
  const out = new Float32Array(m.length);
  const size = rows * cols;
  for (let b = 0; b < batch; b++) {
    const base = b * size;
    for (let r = 0; r < rows; r++) {
      const row = base + r * cols;
      for (let c = 0; c < cols; c++) out[base + c * rows + r] = m[row + c]!;
    }
  }
  return out;
}

// Number formats and Markdown tables for the reports.
export const n = (x, digits = 0) => (x === null || x === undefined ? '–' : Number(x).toFixed(digits));
export const ms = (x) => n(x, 1);

export function table(header, rows) {
  return [
    `| ${header.join(' | ')} |`,
    `| ${header.map(() => '---').join(' | ')} |`,
    ...rows.map((r) => `| ${r.join(' | ')} |`),
  ];
}

'use strict'

// A few seconds of npm run bench: the runner, for this package only (the 3.2.1 peer's SQLite
// driver is not built in CI), on two tiny cells and a small storm. Checks the shape of the JSON
// lines and that every rate is positive; no timing is asserted.

const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const RUNNER = path.join(__dirname, '..', 'bench', 'runner.mjs')

function run(workload, extra) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pixstore-bench-smoke-'))
  try {
    const out = execFileSync(
      process.execPath,
      [RUNNER, '--lib', 'ours', '--workload', workload, '--dir', dir, ...extra],
      { encoding: 'utf8', timeout: 60000 },
    )
    return out
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line))
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

test('the call cells report a positive rate for every workload', () => {
  const lines = run('ops', [
    '--images',
    '1-pixel.png,vilnius-800.webp',
    '--concurrency',
    '1,16',
    '--seconds',
    '0.05',
  ])
  expect(lines[lines.length - 1]).toEqual({ type: 'done' })
  const cells = lines.filter((line) => line.type === 'cell')
  expect(cells).toHaveLength(2 * 2 * 6)
  const workloads = new Set(cells.map((cell) => cell.workload))
  expect([...workloads].sort()).toEqual(
    ['delete', 'getImageRecord', 'imageExists', 'readImage', 'save', 'update'].sort(),
  )
  for (const cell of cells) {
    expect(cell).toEqual({
      type: 'cell',
      workload: expect.any(String),
      concurrency: expect.any(Number),
      image: expect.any(String),
      bytes: expect.any(Number),
      ops: expect.any(Number),
      seconds: expect.any(Number),
      rate: expect.any(Number),
    })
    expect(cell.ops).toBeGreaterThan(0)
    expect(cell.rate).toBeGreaterThan(0)
  }
})

test('a small storm reports memory and event-loop delay', () => {
  const lines = run('storm', ['--images', 'vilnius-800.webp', '--count', '20'])
  const storm = lines.find((line) => line.type === 'storm')
  expect(storm.count).toBe(20)
  expect(storm.rate).toBeGreaterThan(0)
  expect(storm.vmHwm).toBeGreaterThan(0)
  expect(storm.rssPeakSampled).toBeGreaterThanOrEqual(storm.rssBaseline)
  expect(storm.loopDelayP99Ms).toBeGreaterThan(0)
})

test('the stored levels report save and read rates', () => {
  const lines = run('stored', ['--levels', '50', '--seconds', '0.05'])
  const level = lines.find((line) => line.type === 'stored')
  expect(level.level).toBe(50)
  expect(level.save.rate).toBeGreaterThan(0)
  expect(level.read.rate).toBeGreaterThan(0)
  expect(level.readImage.rate).toBeGreaterThan(0)
})

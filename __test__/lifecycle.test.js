// The lifecycle edges: close and re-init in quick succession, calls right after close, worker
// threads terminated mid-call, and two different stores asking for one port.

const { spawnSync } = require('node:child_process')
const net = require('node:net')
const path = require('node:path')

const {
  closePixstoreBackend,
  getImageRecord,
  initPixstoreBackend,
  saveImage,
} = require('pixstore/backend')
const { asset, freePort, freshStore } = require('./helpers.js')

beforeAll(() => closePixstoreBackend())
afterEach(() => closePixstoreBackend())

test('close then init at once: the new store stays open, every time', async () => {
  const [a, b] = [freshStore(), freshStore()]
  initPixstoreBackend(a.config)
  for (let round = 0; round < 100; round++) {
    const closed = closePixstoreBackend()
    initPixstoreBackend(round % 2 ? a.config : b.config)
    await closed
    expect(getImageRecord('nosuchimage')).toBeNull()
  }
})

test('a call made right after closePixstoreBackend fails with NOT_INITIALIZED', async () => {
  initPixstoreBackend(freshStore().config)
  const closed = closePixstoreBackend()
  const late = saveImage(asset('1-pixel.png'))
  await expect(late).rejects.toMatchObject({ code: 'NOT_INITIALIZED' })
  await closed
})

test('closePixstoreBackend waits for calls on a store that a re-init replaced', async () => {
  const [a, b] = [freshStore(), freshStore()]
  initPixstoreBackend(a.config)
  const saves = Array.from({ length: 30 }, () => saveImage(asset('vilnius-800.png')))
  initPixstoreBackend(b.config)
  let settled = 0
  for (const save of saves) save.then(() => (settled += 1))
  await closePixstoreBackend()
  await new Promise((resolve) => setImmediate(resolve))
  expect(settled).toBe(30)
})

test('terminating a worker thread with saves in flight does not crash the process', () => {
  const { config } = freshStore()
  const script = path.join(__dirname, 'fixtures', 'worker-terminate.js')
  const result = spawnSync(process.execPath, [script, JSON.stringify(config)], {
    encoding: 'utf8',
    timeout: 60_000,
  })
  expect({ status: result.status, signal: result.signal }).toEqual({ status: 0, signal: null })
  expect(JSON.parse(result.stdout.trim().split('\n').pop())).toEqual({ survived: true, same: true })
}, 90_000)

test('a second store cannot take the port of another store’s endpoint', async () => {
  const port = await freePort()
  const endpoint = { defaultEndpointEnabled: true, defaultEndpointListenHost: '127.0.0.1' }
  initPixstoreBackend({ ...freshStore().config, ...endpoint, defaultEndpointListenPort: port })

  const other = freshStore().config
  const child = spawnSync(
    process.execPath,
    [
      '-e',
      `try { require('pixstore/backend').initPixstoreBackend(${JSON.stringify({
        ...other,
        ...endpoint,
        defaultEndpointListenPort: port,
      })}); console.log('opened') } catch (e) { console.log(e.code, e.message) }`,
    ],
    { encoding: 'utf8', cwd: path.join(__dirname, '..') },
  )
  expect(child.stdout).toContain('ENDPOINT_UNAVAILABLE')
  expect(child.stdout).toContain(`127.0.0.1:${port}`)
  expect(child.stdout).toContain('another Pixstore store')

  // A program that is not an endpoint at all is named as such.
  const server = net.createServer((socket) => socket.end()).listen(0, '127.0.0.1')
  await new Promise((resolve) => server.once('listening', resolve))
  let caught
  try {
    initPixstoreBackend({ ...other, ...endpoint, defaultEndpointListenPort: server.address().port })
  } catch (err) {
    caught = err
  }
  server.close()
  expect(caught).toMatchObject({ code: 'ENDPOINT_UNAVAILABLE' })
  expect(caught.message).toContain('another program')
})

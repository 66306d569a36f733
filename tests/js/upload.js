// Drive tus-js-client (its Node build) against a tus server for tests/test_clients.py.
//
//   node upload.js SCENARIO ENDPOINT FILE
//
// SCENARIO is one of: plain, resume, parallel, deferred. On success one JSON line goes to stdout
// (at least {"url": <upload URL>}); on failure a JSON line {"error": ...} and exit code 1.
// Retries are disabled so that any server error surfaces instead of being papered over.
'use strict'

const fs = require('node:fs')
const { Readable } = require('node:stream')
const tus = require('tus-js-client')

const [scenario, endpoint, file] = process.argv.slice(2)
if (!scenario || !endpoint || !file) {
  console.error('usage: node upload.js SCENARIO ENDPOINT FILE')
  process.exit(2)
}

function done(result) {
  process.stdout.write(`${JSON.stringify(result)}\n`)
  process.exit(0)
}

function fail(error) {
  process.stdout.write(`${JSON.stringify({ error: String(error) })}\n`)
  process.exit(1)
}

// Record every request the client makes: [method, url, status] (status filled in on response).
function recorder(log) {
  return {
    onBeforeRequest(req) {
      log.push([req.getMethod(), req.getURL(), null])
    },
    onAfterResponse(req, res) {
      for (let i = log.length - 1; i >= 0; i--) {
        if (log[i][0] === req.getMethod() && log[i][1] === req.getURL() && log[i][2] === null) {
          log[i][2] = res.getStatus()
          break
        }
      }
    },
  }
}

function upload(source, options) {
  return new Promise((resolve, reject) => {
    const u = new tus.Upload(source, {
      endpoint,
      retryDelays: null,
      ...options,
      onError: reject,
      onSuccess: () => resolve(u),
    })
    u.start()
  })
}

async function plain() {
  const data = fs.readFileSync(file)
  const log = []
  const u = await upload(data, {
    chunkSize: 256 * 1024,
    metadata: { filename: 'hello wörld.bin', filetype: 'application/octet-stream', empty: '' },
    ...recorder(log),
  })
  done({ url: u.url, requests: log })
}

async function resume() {
  const data = fs.readFileSync(file)
  const chunkSize = 64 * 1024
  // First attempt: abort (mid-request) once about half of the file has gone out.
  const firstLog = []
  const url = await new Promise((resolve, reject) => {
    let aborted = false
    const u = new tus.Upload(data, {
      endpoint,
      chunkSize,
      retryDelays: null,
      metadata: { filename: 'resumed.bin' },
      ...recorder(firstLog),
      onProgress(sent) {
        if (!aborted && sent >= data.length / 2) {
          aborted = true
          u.abort().then(() => resolve(u.url), reject)
        }
      },
      onError: reject,
      onSuccess: () => reject(new Error('the first attempt finished before it was aborted')),
    })
    u.start()
  })
  // Second attempt: a new Upload object that knows only the URL, as after a page reload.
  const secondLog = []
  const u = await upload(data, { uploadUrl: url, chunkSize, ...recorder(secondLog) })
  done({ url: u.url, firstUrl: url, first: firstLog, second: secondLog })
}

async function parallel() {
  const data = fs.readFileSync(file)
  const log = []
  const u = await upload(data, {
    parallelUploads: 3,
    metadata: { filename: 'parallel.bin' },
    ...recorder(log),
  })
  done({ url: u.url, requests: log })
}

// A stream of unknown length, in pieces that do not line up with the chunk size. (Not an
// fs.ReadStream: with one, tus-js-client 4.3.1 on Node 20 waits forever for the last slice.)
function* pieces(data, size) {
  for (let start = 0; start < data.length; start += size) {
    yield data.subarray(start, start + size)
  }
}

async function deferred() {
  const log = []
  const stream = Readable.from(pieces(fs.readFileSync(file), 50_000), { objectMode: false })
  const u = await upload(stream, {
    uploadLengthDeferred: true,
    chunkSize: 64 * 1024,
    metadata: { filename: 'deferred.bin' },
    ...recorder(log),
  })
  done({ url: u.url, requests: log })
}

const scenarios = { plain, resume, parallel, deferred }
if (!(scenario in scenarios)) {
  fail(`unknown scenario ${scenario}`)
}
scenarios[scenario]().catch(fail)

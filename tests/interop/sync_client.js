// Calls rollcall's MIS sync API with @grpc/grpc-js, as an MIS vendor would, from the proto
// files alone.
//
// Usage: node sync_client.js HOST:PORT PROTO_DIR
//
// Loads the proto files with @grpc/proto-loader, pushes pupils and marks for one school over
// the unary calls and the stream, and checks each row's result. Exits with status 1 and a
// message naming the check that failed.

'use strict';

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const SCHOOL = '9192102';

function upn(serial) {
  const digits = [9, 1, 9, 2, 0, 0, 1, 2, 5, 0, Math.floor(serial / 10), serial % 10];
  const total = digits.reduce((sum, digit, index) => sum + digit * (index + 2), 0);
  return 'ABCDEFGHJKLMNPQRTUVWXYZ'[total % 23] + digits.join('');
}

function check(condition, description) {
  if (!condition) {
    throw new Error(`interop check failed: ${description}`);
  }
}

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 30000);
    client[method](request, { deadline }, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

function stream(client, batches) {
  return new Promise((resolve, reject) => {
    const results = [];
    const call = client.StreamSync({ deadline: new Date(Date.now() + 30000) });
    call.on('data', (response) => results.push(response));
    call.on('error', reject);
    call.on('end', () => resolve(results));
    for (const batch of batches) {
      call.write(batch);
    }
    call.end();
  });
}

async function main() {
  const [address, protoDir] = process.argv.slice(2);
  const definition = protoLoader.loadSync('rollcall/mis_adapter/v1/sync.proto', {
    includeDirs: [protoDir],
    keepCase: true,
    enums: String,
    longs: String,
    defaults: true,
  });
  const sync = grpc.loadPackageDefinition(definition).rollcall.mis_adapter.v1;
  const client = new sync.MisSyncService(address, grpc.credentials.createInsecure());

  const pupils = {
    laestab: SCHOOL,
    school_name: 'Node Interop Academy',
    phase: 'PHASE_SECONDARY',
    idempotency_key: 'node-pupils-1',
    source_name: 'Node vendor test',
    pupils: [
      {
        mis_id: 'js-1',
        upn: upn(2),
        forename: 'Test',
        surname: 'Two',
        date_of_birth: '2013-05-01',
        sex: 'M',
        admission_date: '2025-09-01',
        year_group: '8',
      },
      { mis_id: 'js-2', upn: upn(3), forename: 'Test', surname: 'Three', sex: 'M', date_of_birth: '01/05/2013' },
    ],
  };
  const response = await call(client, 'SyncPupils', pupils);
  const outcomes = response.results.map((result) => result.outcome);
  check(
    JSON.stringify(outcomes) === JSON.stringify(['ROW_OUTCOME_APPLIED', 'ROW_OUTCOME_REJECTED']),
    `pupil outcomes ${outcomes}`,
  );
  check(response.results[1].reason_code === 'invalid_date', `reason code ${response.results[1].reason_code}`);
  check(response.results[1].field === 'date_of_birth', `field ${response.results[1].field}`);

  const replay = await call(client, 'SyncPupils', pupils);
  check(replay.replayed === true, 'the same batch again is a replay');

  try {
    await call(client, 'SyncMarks', { laestab: SCHOOL, marks: [] });
    check(false, 'a batch without an idempotency key must fail');
  } catch (error) {
    check(error.code === grpc.status.INVALID_ARGUMENT, `missing key status ${error.code}`);
    check(error.details.includes('idempotency_key'), `message ${error.details}`);
  }

  const results = await stream(client, [
    {
      marks: {
        laestab: SCHOOL,
        idempotency_key: 'node-marks-1',
        marks: [
          { mis_id: 'js-1', date: '2025-09-02', session: 'SESSION_PM', code: 'M', comment: 'Dentist' },
          { mis_id: 'js-1', date: '2025-08-29', session: 'SESSION_AM', code: '/' },
        ],
      },
    },
    {
      marks: {
        laestab: SCHOOL,
        idempotency_key: 'node-marks-2',
        dry_run: true,
        marks: [{ mis_id: 'js-1', date: '2025-09-03', session: 'SESSION_AM', code: '/' }],
      },
    },
  ]);
  check(results.length === 2, `one result per batch, got ${results.length}`);
  check(results[0].batch_index === 0 && results[1].batch_index === 1, 'batch order');
  const marks = results[0].marks.results.map((result) => [result.outcome, result.reason_code]);
  check(
    JSON.stringify(marks) === JSON.stringify([['ROW_OUTCOME_APPLIED', ''], ['ROW_OUTCOME_REJECTED', 'not_on_roll']]),
    `mark outcomes ${JSON.stringify(marks)}`,
  );
  check(results[1].marks.dry_run === true, 'the second batch is a dry run');

  client.close();
  console.log('node interop: ok');
}

main().catch((error) => {
  console.error(error.message || error);
  process.exit(1);
});

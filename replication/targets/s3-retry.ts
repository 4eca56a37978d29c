// Retrying S3 requests: exponential backoff with full jitter (each wait is uniform in
// [0, min(cap, base * 2^n)]), for throttling, server errors and network failures only. A definite
// answer (404, 403, 412, 501, any other 4xx) is never retried: retrying it would only delay the
// error, or, for a 412, turn "somebody else holds this lock" into a wrong answer.

export interface RetryPolicy {
  /** Total tries, the first included. */
  maxAttempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = { maxAttempts: 10, baseDelayMs: 100, maxDelayMs: 10_000 };

/** Error codes of a failed connection or exchange: the request may or may not have reached the server. */
const NETWORK_CODES = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ECONNABORTED', 'EPIPE', 'ETIMEDOUT', 'EAI_AGAIN', 'ENETUNREACH',
  'EHOSTUNREACH', 'ENETDOWN', 'EHOSTDOWN', 'ENOTCONN', 'ERR_STREAM_PREMATURE_CLOSE',
]);

/**
 * S3 error codes that mean "slow down" or "try again", whatever the HTTP status says. A skewed clock is
 * among them: the SDK corrects its clock offset from the refusal, so the next try is signed right.
 */
const RETRYABLE_CODES = new Set([
  'SlowDown', 'Throttling', 'ThrottlingException', 'ThrottledException', 'RequestThrottled',
  'TooManyRequestsException', 'RequestLimitExceeded', 'BandwidthLimitExceeded', 'RequestTimeout',
  'RequestTimeoutException', 'InternalError', 'ServiceUnavailable', 'OperationAborted', 'RequestTimeTooSkewed',
]);

export interface S3ErrorLike {
  name?: string;
  code?: string;
  message?: string;
  errors?: unknown[];
  $metadata?: { httpStatusCode?: number };
}

export function httpStatusOf(err: unknown): number | undefined {
  return (err as S3ErrorLike | undefined)?.$metadata?.httpStatusCode;
}

/** The errno-style code of a network failure (also inside the AggregateError Node throws for happy eyeballs). */
export function networkCodeOf(err: unknown): string | undefined {
  const e = err as S3ErrorLike | undefined;
  if (e?.code && NETWORK_CODES.has(e.code)) return e.code;
  if (e?.name === 'TimeoutError') return 'ETIMEDOUT';
  for (const inner of e?.errors ?? []) {
    const code = networkCodeOf(inner);
    if (code) return code;
  }
  return undefined;
}

/** A response body that ended before Content-Length bytes arrived (a connection cut mid-transfer). */
export class TruncatedBodyError extends Error {
  constructor(expected: number, got: number) {
    super(`response body ended after ${got} of ${expected} bytes`);
    this.name = 'TruncatedBodyError';
  }
}

export function isTransient(err: unknown): boolean {
  if (err instanceof TruncatedBodyError) return true;
  if (networkCodeOf(err)) return true;
  const status = httpStatusOf(err);
  const name = (err as S3ErrorLike | undefined)?.name ?? '';
  if (RETRYABLE_CODES.has(name)) return true;
  if (status === undefined) return false;
  return status === 429 || (status >= 500 && status !== 501);
}

export function backoffDelayMs(policy: RetryPolicy, failedAttempts: number, random: () => number = Math.random): number {
  const ceiling = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (failedAttempts - 1));
  return Math.floor(random() * ceiling);
}

export interface AttemptContext {
  /** 1 for the first try. */
  attempt: number;
  /** True when an earlier try failed in a way that leaves open whether the server applied it. */
  earlierAttemptAmbiguous: boolean;
}

/**
 * Runs op until it succeeds, fails with a non-transient error, or policy.maxAttempts tries have failed;
 * then rethrows the last error, with `attempts` set on it.
 */
export async function withRetry<T>(policy: RetryPolicy, op: (context: AttemptContext) => Promise<T>): Promise<T> {
  let earlierAttemptAmbiguous = false;
  for (let attempt = 1; ; attempt++) {
    try {
      return await op({ attempt, earlierAttemptAmbiguous });
    } catch (err) {
      if (!isTransient(err) || attempt >= policy.maxAttempts) {
        if (err && typeof err === 'object') Object.assign(err, { attempts: attempt });
        throw err;
      }
      // A refused connection never reached the server; anything else may have.
      if (networkCodeOf(err) !== 'ECONNREFUSED') earlierAttemptAmbiguous = true;
      await new Promise((resolve) => setTimeout(resolve, backoffDelayMs(policy, attempt)));
    }
  }
}

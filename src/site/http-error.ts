// An error that becomes an HTTP answer with the JSON error body of docs/site-protocol.md.

export class SiteHttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly extra: { committedOffset?: number; serverTime?: number } = {},
  ) {
    super(message);
    this.name = 'SiteHttpError';
  }

  body(): Buffer {
    return Buffer.from(JSON.stringify({ error: { code: this.code, message: this.message, ...this.extra } }));
  }
}

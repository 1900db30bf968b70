import { ErrorCode } from './constants';

/** A peer broke the protocol. Closes that session only; `code` goes into the ERROR frame. */
export class ProtocolError extends Error {
  constructor(
    message: string,
    readonly code: ErrorCode = ErrorCode.PROTOCOL,
  ) {
    super(message);
    this.name = 'ProtocolError';
  }
}

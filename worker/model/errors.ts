// Errors of model loading. Each names the file and, where there is one, the tensor or
// config field at fault, so a user with a broken download knows what to fetch again.

export type ModelErrorCode =
  | 'model_not_found' // directory, file or s3 prefix missing
  | 'config_invalid' // config.json is not a Mamba config or has bad fields
  | 'safetensors_invalid' // corrupt or truncated safetensors header/file
  | 'tensor_missing'
  | 'tensor_shape' // a tensor has the wrong shape for the config
  | 'dtype_unsupported'
  | 'tokenizer_invalid'
  | 'chat_template_invalid' // tokenizer_config.json's chat_template cannot be used turn by turn
  | 'torch_checkpoint_invalid' // pytorch_model.bin is not a plain state_dict we can read safely
  | 'model_download_failed' // fetching an s3:// model into the local cache failed
  | 'token_out_of_range';

export class ModelError extends Error {
  readonly code: ModelErrorCode;
  constructor(code: ModelErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ModelError';
    this.code = code;
  }
}

defmodule DspyPoolClient do
  @moduledoc """
  A thin wrapper over the generated `DspyPool.V1.DSPyPool.Stub` for calling a
  dspy-pool sidecar from Elixir.

      {:ok, channel} = DspyPoolClient.connect("127.0.0.1:50051")

      {:ok, _program} =
        DspyPoolClient.register_program(channel, %{
          name: "qa",
          signature: "question -> answer",
          module: "chain_of_thought"
        })

      {:ok, %{outputs: %{"answer" => answer}}} =
        DspyPoolClient.execute(channel, "qa", %{question: "What is DSPy?"}, timeout: 10_000)

  ## Struct <-> map

  Inputs and outputs are `google.protobuf.Struct`. `to_struct/1` turns a map
  into one with `Google.Protobuf.from_map/1` after turning atom keys into
  strings (from_map accepts string keys only); `from_struct/1` is
  `Google.Protobuf.to_map/1`. Values: strings, numbers, booleans, `nil`,
  lists and nested maps. Every Struct number is a double, so numbers come
  back as floats: `3` is returned as `3.0` (use `round/1` or `trunc/1` for a
  field typed `int`). Output keys are strings.

  ## Deadlines

  Every call takes `timeout:` in milliseconds (default #{30_000}, the
  server's default). It is sent as the gRPC deadline: the server counts queue
  wait plus execution against it and answers DEADLINE_EXCEEDED (status 4)
  when it passes.

  ## Errors

  A failed call returns `{:error, %GRPC.RPCError{status: code, message: msg}}`
  with the codes of the server's README: INVALID_ARGUMENT (3), NOT_FOUND (5),
  RESOURCE_EXHAUSTED (8), DEADLINE_EXCEEDED (4), UNAVAILABLE (14),
  INTERNAL (13). Compare with `GRPC.Status.not_found()` and friends.
  """

  alias DspyPool.V1.DSPyPool.Stub

  alias DspyPool.V1.{
    CloseSessionRequest,
    DeleteProgramRequest,
    ExecuteRequest,
    FallbackSpec,
    FieldSpec,
    GetPoolStatusRequest,
    GetProgramRequest,
    GetSessionRequest,
    ListProgramsRequest,
    ProgramSpec,
    RegisterProgramRequest
  }

  @default_target "127.0.0.1:50051"
  @default_timeout 30_000

  @type channel :: GRPC.Channel.t()
  @type error :: {:error, GRPC.RPCError.t() | term()}

  @doc """
  Connects with the Mint adapter, which fails fast (`econnrefused`) when no
  server listens; the default Gun adapter keeps retrying until its timeout.
  Extra `opts` go to `GRPC.Stub.connect/2`.
  """
  @spec connect(String.t(), keyword()) :: {:ok, channel()} | error()
  def connect(target \\ @default_target, opts \\ []) do
    GRPC.Stub.connect(target, Keyword.put_new(opts, :adapter, GRPC.Client.Adapters.Mint))
  end

  @spec disconnect(channel()) :: {:ok, channel()} | error()
  def disconnect(channel), do: GRPC.Stub.disconnect(channel)

  @doc """
  Registers a program. `spec` is a map with atom keys, as in `ProgramSpec`:
  `:name`, `:signature`, `:module`, `:instructions`, `:description`,
  `:state_json`, `:input_fields`/`:output_fields` (lists of
  `%{name:, type:, description:}`), `:demos` (a list of maps),
  `:module_options` (a map) and `:fallback` (a map; its `:static_outputs` is
  a map).
  """
  @spec register_program(channel(), map(), keyword()) :: {:ok, struct()} | error()
  def register_program(channel, spec, opts \\ []) when is_map(spec) do
    Stub.register_program(channel, %RegisterProgramRequest{spec: build_spec(spec)}, call_opts(opts))
  end

  @doc "The program's latest version, or `version:`."
  def get_program(channel, name, opts \\ []) do
    request = %GetProgramRequest{name: name, version: Keyword.get(opts, :version, 0)}
    Stub.get_program(channel, request, call_opts(opts))
  end

  def list_programs(channel, opts \\ []) do
    request = %ListProgramsRequest{all_versions: Keyword.get(opts, :all_versions, false)}

    with {:ok, response} <- Stub.list_programs(channel, request, call_opts(opts)) do
      {:ok, response.programs}
    end
  end

  @doc "Deletes `version:`, or every version when it is 0 (the default)."
  def delete_program(channel, name, opts \\ []) do
    request = %DeleteProgramRequest{name: name, version: Keyword.get(opts, :version, 0)}

    with {:ok, response} <- Stub.delete_program(channel, request, call_opts(opts)) do
      {:ok, response.deleted_versions}
    end
  end

  @doc """
  Runs a program. Options: `:version`, `:session_id`, `:request_id`,
  `:mode`, `:max_optimization_wait_ms`, `:timeout` (ms).

  `:mode` (`"traditional"`, `"optimized"`, `"hybrid"`, `"evaluation"`)
  overrides the program's execution policy for this call (ignored when
  `:version` is set); `:max_optimization_wait_ms`: in optimized mode while the
  first optimization still runs, wait this long for its version, then run the
  base version.

  Returns `{:ok, %{outputs: map, execution_mode: string, evaluation: map | nil,
  response: ExecuteResponse}}`. `execution_mode` says how the version was
  chosen: `"traditional"`, `"optimized"`, `"hybrid:optimized"`,
  `"hybrid:traditional"`, `"evaluation"`, or `"version"` (the call named one).
  `evaluation` is, in evaluation mode, the other version's answer:
  `%{outputs: map, version:, latency_ms:, score:, error:}`; otherwise `nil`.
  The response has `worker`, `timings`, `usage`, `served_by` and
  `fallback_reason`.
  """
  @spec execute(channel(), String.t(), map(), keyword()) :: {:ok, map()} | error()
  def execute(channel, program, inputs, opts \\ []) when is_map(inputs) do
    request = %ExecuteRequest{
      program: program,
      version: Keyword.get(opts, :version, 0),
      inputs: to_struct(inputs),
      session_id: Keyword.get(opts, :session_id, ""),
      request_id: Keyword.get(opts, :request_id, ""),
      mode: Keyword.get(opts, :mode, ""),
      max_optimization_wait_ms: Keyword.get(opts, :max_optimization_wait_ms, 0)
    }

    with {:ok, response} <- Stub.execute(channel, request, call_opts(opts)) do
      {:ok,
       %{
         outputs: from_struct(response.outputs),
         execution_mode: response.execution_mode,
         evaluation: evaluation_arm(response.evaluation),
         response: response
       }}
    end
  end

  @doc "Like `execute/4`, returning the outputs map or raising the `GRPC.RPCError`."
  def execute!(channel, program, inputs, opts \\ []) do
    case execute(channel, program, inputs, opts) do
      {:ok, %{outputs: outputs}} -> outputs
      {:error, %GRPC.RPCError{} = error} -> raise error
      {:error, other} -> raise "dspy-pool execute failed: #{inspect(other)}"
    end
  end

  @doc """
  Runs `fun.(session_id)` with a fresh session id (or `:session_id`) and
  closes the session afterwards, even when `fun` raises. Pass the id to
  `execute/4` as `session_id:` so the calls share one history.
  """
  def with_session(channel, fun, opts \\ []) when is_function(fun, 1) do
    session_id = Keyword.get_lazy(opts, :session_id, &new_session_id/0)

    try do
      fun.(session_id)
    after
      close_session(channel, session_id, opts)
    end
  end

  @doc "The session's turns, each with `inputs` and `outputs` as maps."
  def get_session(channel, session_id, opts \\ []) do
    with {:ok, session} <-
           Stub.get_session(channel, %GetSessionRequest{session_id: session_id}, call_opts(opts)) do
      turns =
        Enum.map(session.turns, fn turn ->
          %{
            program: turn.program,
            inputs: from_struct(turn.inputs),
            outputs: from_struct(turn.outputs)
          }
        end)

      {:ok, %{session_id: session.session_id, turns: turns, session: session}}
    end
  end

  @doc "Closes a session; returns the number of turns it held."
  def close_session(channel, session_id, opts \\ []) do
    request = %CloseSessionRequest{session_id: session_id}

    with {:ok, response} <- Stub.close_session(channel, request, call_opts(opts)) do
      {:ok, response.turns}
    end
  end

  def pool_status(channel, opts \\ []) do
    Stub.get_pool_status(channel, %GetPoolStatusRequest{}, call_opts(opts))
  end

  @doc "True once the pool reports serving (workers booted, not draining)."
  def serving?(channel, opts \\ []) do
    match?({:ok, %{serving: true}}, pool_status(channel, Keyword.put_new(opts, :timeout, 2_000)))
  end

  @doc "A map (atom or string keys) -> `Google.Protobuf.Struct`."
  @spec to_struct(map() | nil) :: Google.Protobuf.Struct.t()
  def to_struct(nil), do: %Google.Protobuf.Struct{}
  def to_struct(map) when is_map(map), do: map |> stringify_keys() |> Google.Protobuf.from_map()

  @doc "`Google.Protobuf.Struct` -> a map with string keys (numbers as floats)."
  @spec from_struct(Google.Protobuf.Struct.t() | nil) :: map()
  def from_struct(nil), do: %{}
  def from_struct(struct), do: Google.Protobuf.to_map(struct)

  # ---- internals --------------------------------------------------------

  defp evaluation_arm(nil), do: nil

  defp evaluation_arm(arm) do
    %{
      outputs: from_struct(arm.outputs),
      version: arm.version,
      latency_ms: arm.latency_ms,
      score: arm.score,
      error: arm.error
    }
  end

  defp call_opts(opts), do: [timeout: Keyword.get(opts, :timeout, @default_timeout)]

  defp new_session_id do
    "ex-" <> Base.url_encode64(:crypto.strong_rand_bytes(12), padding: false)
  end

  defp stringify_keys(%{__struct__: _} = struct), do: struct

  defp stringify_keys(map) when is_map(map) do
    Map.new(map, fn {key, value} -> {to_string(key), stringify_keys(value)} end)
  end

  defp stringify_keys(list) when is_list(list), do: Enum.map(list, &stringify_keys/1)
  defp stringify_keys(value), do: value

  defp build_spec(spec) do
    fields =
      spec
      |> Map.new(fn {key, value} -> {to_atom_key(key), value} end)
      |> Map.update(
        :input_fields,
        [],
        &Enum.map(&1, fn field -> struct!(FieldSpec, atomize(field)) end)
      )
      |> Map.update(
        :output_fields,
        [],
        &Enum.map(&1, fn field -> struct!(FieldSpec, atomize(field)) end)
      )
      |> Map.update(:demos, [], &Enum.map(&1, fn demo -> to_struct(demo) end))
      |> Map.update(:module_options, nil, &to_struct/1)
      |> Map.update(:fallback, nil, &build_fallback/1)

    struct!(ProgramSpec, fields)
  end

  defp build_fallback(nil), do: nil

  defp build_fallback(fallback) do
    fallback
    |> atomize()
    |> Map.update(:static_outputs, nil, &to_struct/1)
    |> then(&struct!(FallbackSpec, &1))
  end

  defp atomize(map), do: Map.new(map, fn {key, value} -> {to_atom_key(key), value} end)

  defp to_atom_key(key) when is_atom(key), do: key
  defp to_atom_key(key) when is_binary(key), do: String.to_existing_atom(key)
end

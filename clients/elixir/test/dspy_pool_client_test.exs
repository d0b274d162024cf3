defmodule DspyPoolClientTest do
  use ExUnit.Case, async: true

  describe "Struct conversion" do
    test "round-trips a map with atom keys into string keys, numbers as floats" do
      struct =
        DspyPoolClient.to_struct(%{question: "q", k: 3, tags: ["a", %{deep: true}], none: nil})

      assert DspyPoolClient.from_struct(struct) == %{
               "question" => "q",
               "k" => 3.0,
               "tags" => ["a", %{"deep" => true}],
               "none" => nil
             }
    end

    test "nil is an empty Struct" do
      assert DspyPoolClient.from_struct(DspyPoolClient.to_struct(nil)) == %{}
    end
  end

  describe "against a running server" do
    @describetag :integration

    setup do
      target = System.get_env("DSPY_POOL_TARGET", "127.0.0.1:50051")
      {:ok, channel} = DspyPoolClient.connect(target)
      on_exit(fn -> DspyPoolClient.disconnect(channel) end)
      %{channel: channel}
    end

    test "registers and executes a program", %{channel: channel} do
      {:ok, program} =
        DspyPoolClient.register_program(channel, %{name: "ex_qa", signature: "question -> answer"})

      assert program.version >= 1

      {:ok, %{outputs: outputs, response: response}} =
        DspyPoolClient.execute(channel, "ex_qa", %{question: "What is DSPy?"}, timeout: 10_000)

      assert is_binary(outputs["answer"])
      assert response.served_by == "primary"
    end

    test "execute with a mode returns how the version was chosen", %{channel: channel} do
      {:ok, _} =
        DspyPoolClient.register_program(channel, %{name: "ex_modes", signature: "question -> answer"})

      {:ok, %{execution_mode: mode, evaluation: evaluation}} =
        DspyPoolClient.execute(channel, "ex_modes", %{question: "Which mode?"}, mode: "traditional")

      assert mode == "traditional"
      assert evaluation == nil
    end

    test "an unknown program is NOT_FOUND", %{channel: channel} do
      assert {:error, %GRPC.RPCError{status: status}} =
               DspyPoolClient.execute(channel, "ex_missing", %{question: "x"})

      assert status == GRPC.Status.not_found()
    end

    test "a session keeps its turns until closed", %{channel: channel} do
      {:ok, _} =
        DspyPoolClient.register_program(channel, %{name: "ex_chat", signature: "question -> answer"})

      turns =
        DspyPoolClient.with_session(channel, fn session_id ->
          {:ok, _} =
            DspyPoolClient.execute(channel, "ex_chat", %{question: "one"}, session_id: session_id)

          {:ok, _} =
            DspyPoolClient.execute(channel, "ex_chat", %{question: "two"}, session_id: session_id)

          {:ok, %{turns: turns}} = DspyPoolClient.get_session(channel, session_id)
          Enum.map(turns, & &1.inputs["question"])
        end)

      assert turns == ["one", "two"]
    end
  end
end
